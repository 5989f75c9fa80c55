// AudioWorklet: microphone float samples at the context's rate → 16 kHz mono int16 frames.
// Posts one Int16Array of `frameSamples` (default 320 = 20 ms) at a time to the page.

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.targetRate = opts.targetRate || 16000;
    this.frameSamples = opts.frameSamples || 320;
    this.ratio = sampleRate / this.targetRate; // input samples per output sample
    this.position = 0; // fractional read position into `pending`
    this.pending = new Float32Array(0);
    this.out = new Int16Array(this.frameSamples);
    this.outFill = 0;
  }

  // Linear interpolation after a boxcar average over one output period: enough anti-aliasing
  // for speech when the browser did not give us a 16 kHz context already.
  resample(input) {
    const merged = new Float32Array(this.pending.length + input.length);
    merged.set(this.pending);
    merged.set(input, this.pending.length);
    const ratio = this.ratio;
    const span = Math.max(1, Math.floor(ratio));
    let pos = this.position;
    while (pos + span < merged.length) {
      let value;
      if (ratio === 1) {
        value = merged[pos];
      } else {
        const base = Math.floor(pos);
        const frac = pos - base;
        let acc = 0;
        for (let k = 0; k < span; k++) {
          acc += merged[base + k] * (1 - frac) + merged[base + k + 1] * frac;
        }
        value = acc / span;
      }
      const clipped = Math.max(-1, Math.min(1, value));
      this.out[this.outFill++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
      if (this.outFill === this.frameSamples) {
        this.port.postMessage(this.out.slice(0));
        this.outFill = 0;
      }
      pos += ratio;
    }
    const keep = Math.floor(pos);
    this.pending = merged.slice(keep);
    this.position = pos - keep;
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const channel = input[0];
      if (input.length > 1) {
        const mono = new Float32Array(channel.length);
        for (let c = 0; c < input.length; c++) {
          for (let i = 0; i < mono.length; i++) mono[i] += input[c][i] / input.length;
        }
        this.resample(mono);
      } else {
        this.resample(channel);
      }
    }
    return true;
  }
}

registerProcessor('pcm-capture', PcmCapture);
