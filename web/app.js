// asrhub demo page: plain static files, no build step.
// Captures the microphone through an AudioWorklet (16 kHz int16 frames) and talks to whichever
// protocol is chosen: every enabled protocol of the hub (its /services says which and where),
// each through a small adapter below. Partials and finals, speaker labels, VAD events, speaker
// registration, file transcription with progress and SRT/VTT/JSON downloads. Every error is
// shown as text in #error.
'use strict';

// What the page knows how to drive. `browser: false`: no browser can open that transport.
const PROTOCOLS = {
  ptt: { label: 'Push-to-talk', port: 9999, live: true },
  streaming_stt: { label: 'Streaming STT', port: 8765, live: true, language: true },
  vad_stream: { label: 'VAD stream + speakers', port: 9200, live: true, vad: true },
  session_broadcast: { label: 'Session broadcast', port: 8000, live: true },
  funasr_runtime: { label: 'FunASR runtime, 2pass', port: 10095, live: true, language: true },
  openai_api: { label: 'OpenAI API: Realtime + upload', port: 8080, live: true, file: true, language: true },
  file_transcription: { label: 'File upload', port: 8767, file: true },
  wyoming: { label: 'Wyoming', port: 10300, browser: false },
};
const SPEAKER_COLOURS = ['#2b6cb0', '#c05621', '#2f855a', '#6b46c1', '#b83280', '#2c7a7b', '#975a16', '#c53030'];

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let token = params.get('token') || sessionStorage.getItem('asrhub-token') || '';

const ui = {
  protocol: $('protocol'), language: $('language'), languageNote: $('language-note'),
  endpoint: $('endpoint'), state: $('conn-state'), info: $('protocol-info'),
  start: $('start'), stop: $('stop'), level: document.querySelector('#level span'),
  levelMeter: $('level'), levelDb: $('level-db'),
  partial: $('partial'), finals: $('finals'), error: $('error'), log: $('log'),
  vadPanel: $('vad-panel'), vadEvents: $('vad-events'), speakerEvents: $('speaker-events'),
  livePanel: $('live-panel'), filePanel: $('file-panel'), services: $('services'),
  tokenRow: $('token-row'), token: $('token'), broadcastRow: $('broadcast-row'),
};

let ports = Object.fromEntries(Object.entries(PROTOCOLS).map(([name, p]) => [name, p.port]));
let enabled = null;      // Set of protocol names from /services (null: not known)
let socket = null;       // the open WebSocket for the chosen protocol
let session = null;      // the live adapter's state while the microphone runs
let mic = null;          // { context, stream, node, source }
let frameSink = null;    // function(Int16Array) receiving 20 ms frames while capturing
let registering = false;

// ------------------------------------------------------------------ helpers

function setState(kind, text) {
  ui.state.className = `state state-${kind}`;
  ui.state.textContent = text;
}

function showError(text) {
  ui.error.textContent = text || '';
  if (text) logLine(`error: ${text}`);
}

function logLine(text, list = ui.log) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
}

function speakerColour(name) {
  let hash = 0;
  for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return SPEAKER_COLOURS[hash % SPEAKER_COLOURS.length];
}

function speakerChip(name) {
  const chip = document.createElement('span');
  chip.className = 'speaker';
  chip.textContent = name;
  chip.style.setProperty('--speaker-color', speakerColour(name));
  return chip;
}

function transcriptLine(text, speaker) {
  const li = document.createElement('li');
  if (speaker) li.appendChild(speakerChip(speaker));
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  li.appendChild(body);
  return li;
}

function showPartial(text) {
  ui.partial.textContent = text || '';
}

function addFinal(text, speaker) {
  showPartial('');
  if (!text || !text.trim()) return;
  ui.finals.appendChild(transcriptLine(text.trim(), speaker));
  ui.finals.lastChild.scrollIntoView({ block: 'nearest' });
}

function withToken(url) {
  if (!token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
}

function host() {
  const name = location.hostname || '127.0.0.1';
  return name.includes(':') ? `[${name}]` : name;
}

function wsUrl(protocol, path = '/') {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return withToken(`${scheme}://${host()}:${ports[protocol]}${path}`);
}

function httpUrl(protocol, path) {
  return `${location.protocol === 'https:' ? 'https' : 'http'}://${host()}:${ports[protocol]}${path}`;
}

function shown(url) {  // an endpoint as displayed: never the token
  return url.replace(/([?&]token=)[^&]*/, '$1…');
}

function closeReason(event) {
  const known = {
    1000: 'closed normally', 1001: 'the server is shutting down', 1006: 'the connection dropped',
    1007: 'the server could not use what was sent', 1008: 'the server refused the connection',
    1009: 'a message was too large', 1011: 'the server hit an internal error',
    1013: 'the server is busy, try again later',
  };
  const why = event.reason ? `: ${event.reason}` : '';
  return `${known[event.code] || `closed (code ${event.code})`}${why}`;
}

function bytesToBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function int16ToBase64(samples) {
  return bytesToBase64(new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength));
}

function concatInt16(frames) {
  const total = frames.reduce((n, f) => n + f.length, 0);
  const out = new Int16Array(total);
  let offset = 0;
  for (const f of frames) { out.set(f, offset); offset += f.length; }
  return out;
}

function int16ToFloat32(frame) {
  const out = new Float32Array(frame.length);
  for (let i = 0; i < frame.length; i++) out[i] = frame[i] / 32768;
  return out;
}

// 16 kHz → 24 kHz (the Realtime API's PCM rate), linear interpolation; `carry` keeps the last
// sample of the previous frame so frames join without a click.
function upsample16to24(frame, state) {
  const out = new Int16Array(Math.floor(frame.length * 3 / 2));
  const prev = state.last === undefined ? frame[0] : state.last;
  for (let j = 0; j < out.length; j++) {
    const pos = (j * 2) / 3 - 1 / 3;   // position in input samples, -1/3 = between prev and frame[0]
    const i = Math.floor(pos);
    const frac = pos - i;
    const a = i < 0 ? prev : frame[i];
    const b = frame[Math.min(frame.length - 1, i + 1)];
    out[j] = Math.round(a + (b - a) * frac);
  }
  state.last = frame[frame.length - 1];
  return out;
}

async function readError(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    const err = body.error;
    if (err && typeof err === 'object') return err.message || JSON.stringify(err);
    return body.message || err || text;
  } catch (e) {
    return text || `${response.status} ${response.statusText}`;
  }
}

// ------------------------------------------------------------------ services and token

async function loadServices() {
  let info;
  try {
    const response = await fetch(withToken('/services'), { cache: 'no-store' });
    if (response.status === 401) {
      askForToken(token ? 'the token was refused: type the right one' : 'this hub asks for an access token');
      return;
    }
    if (!response.ok) {
      logLine(`service list not available (${response.status}); using the default ports`);
      return;
    }
    info = await response.json();
  } catch (err) {
    logLine('service list not available; using the default ports');
    return;
  }
  if (token) ui.tokenRow.hidden = false;  // auth is on: keep the field for changes
  enabled = new Set();
  for (const p of info.protocols || []) {
    ports[p.name] = p.port;
    enabled.add(p.name);
  }
  for (const option of ui.protocol.options) {
    const known = PROTOCOLS[option.value];
    const on = enabled.has(option.value);
    option.disabled = !on;
    option.textContent = `${known.label} (${on ? ports[option.value] : 'not enabled'})`;
  }
  ui.services.textContent = '';
  for (const p of info.protocols || []) {
    const li = document.createElement('li');
    const known = PROTOCOLS[p.name];
    const extra = p.name.includes('.');  // a protocol's second port (vad_stream.static: this page)
    const reach = extra ? (p.name.endsWith('.static') ? 'serves this demo page' : `second port of ${p.name.split('.')[0]}`)
      : !known ? 'no page adapter (use its own clients)'
        : known.browser === false ? `${p.transport || 'tcp'} only: not reachable from a browser (use its own clients)`
          : 'on this page';
    li.textContent = `${p.name} — port ${p.port}${p.tls ? ' (TLS)' : ''} — ${reach}${extra ? '' : `. ${p.description || ''}`}`;
    if (!extra && (!known || known.browser === false)) li.className = 'off';
    ui.services.appendChild(li);
  }
  if (info.model) logLine(`engine ${info.engine} (${info.model})`);
}

function askForToken(message) {
  ui.tokenRow.hidden = false;
  ui.token.value = token;
  showError(message);
  ui.token.focus();
}

async function applyToken() {
  token = ui.token.value.trim();
  if (token) sessionStorage.setItem('asrhub-token', token);
  else sessionStorage.removeItem('asrhub-token');
  if (socket) socket.close(1000);
  showError('');
  await loadServices();
  showPanels();
}

// ------------------------------------------------------------------ microphone

async function startMic(onFrame) {
  frameSink = onFrame;
  if (mic) return;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error('this browser cannot capture audio here (a secure origin — https or localhost — is needed)');
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (err) {
    throw new Error(`no microphone: ${err.message || err.name} (allow the microphone for this page)`);
  }
  let context;
  try {
    context = new AudioContext({ sampleRate: 16000 });  // the browser's own high-quality resampler
  } catch (err) {
    context = new AudioContext();                        // the worklet resamples instead
  }
  await context.audioWorklet.addModule('pcm-worklet.js');
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, 'pcm-capture', {
    processorOptions: { targetRate: 16000, frameSamples: 320 },
  });
  node.port.onmessage = (event) => {
    const frame = event.data;
    let energy = 0;
    for (let i = 0; i < frame.length; i++) energy += (frame[i] / 32768) ** 2;
    const rms = Math.sqrt(energy / frame.length);
    const db = rms > 0 ? 20 * Math.log10(rms) : -100;
    const percent = Math.max(0, Math.min(100, (db + 60) * (100 / 60)));  // -60 dBFS .. 0
    ui.level.style.width = `${percent}%`;
    ui.levelMeter.setAttribute('aria-valuenow', String(Math.round(percent)));
    ui.levelDb.textContent = `${Math.max(-99, Math.round(db))} dB`;
    if (frameSink) frameSink(frame);
  };
  source.connect(node);
  mic = { context, stream, node, source };
}

async function stopMic() {
  frameSink = null;
  if (!mic) return;
  mic.source.disconnect();
  mic.node.disconnect();
  mic.stream.getTracks().forEach((t) => t.stop());
  await mic.context.close();
  mic = null;
  ui.level.style.width = '0';
  ui.levelMeter.setAttribute('aria-valuenow', '0');
  ui.levelDb.textContent = '– dB';
}

// ------------------------------------------------------------------ connections

function notEnabled(protocol) {
  return enabled !== null && !enabled.has(protocol)
    ? ` — ${protocol} is not enabled on this hub (see the list below)` : '';
}

function connect(protocol, path = '/') {
  return new Promise((resolve, reject) => {
    if (socket && socket.readyState === WebSocket.OPEN && socket.asrhubKey === `${protocol}${path}`) {
      resolve(socket);
      return;
    }
    if (socket) socket.close(1000);
    const url = wsUrl(protocol, path);
    ui.endpoint.textContent = shown(url);
    setState('connecting', 'connecting…');
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      reject(new Error(`cannot reach ${shown(url)}: ${err.message}`));
      return;
    }
    ws.asrhubKey = `${protocol}${path}`;
    ws.binaryType = 'arraybuffer';
    socket = ws;
    let opened = false;
    ws.onopen = () => { opened = true; setState('open', `connected to ${protocol}`); showError(''); resolve(ws); };
    ws.onerror = () => {
      if (!opened) {
        setState('error', 'cannot connect');
        const hint = notEnabled(protocol) || ' — is asrhub running with this protocol enabled?'
          + (token ? ' Is the token right?' : ' Does it need a token?');
        reject(new Error(`cannot reach ${shown(url)}${hint}`));
      }
    };
    ws.onclose = (event) => {
      if (socket === ws) socket = null;
      setState(event.code === 1000 ? 'idle' : 'error', `disconnected: ${closeReason(event)}`);
      if (event.code !== 1000 && opened) showError(`connection ${closeReason(event)}`);
      if (session && session.ws === ws) {
        stopMic();
        session = null;
        ui.start.disabled = false;
        ui.stop.disabled = true;
      }
    };
    ws.onmessage = (event) => handleMessage(protocol, event);
  });
}

function handleMessage(protocol, event) {
  if (typeof event.data !== 'string') return;
  let msg;
  try { msg = JSON.parse(event.data); } catch (err) { logLine(`non-JSON message: ${event.data.slice(0, 200)}`); return; }
  if (protocol === 'file_transcription') { handleFileMessage(msg); return; }
  const adapter = live[protocol];
  if (adapter && adapter.message && adapter.message(msg)) return;
  handleCommon(msg);
}

// Messages shared by the page's own protocols (ptt, streaming_stt, vad_stream).
function handleCommon(msg) {
  switch (msg.type) {
    case 'result':
      if (msg.mode === 'partial' || msg.is_final === false) showPartial(msg.text);
      else addFinal(msg.text, msg.speaker);
      break;
    case 'partial': showPartial(msg.text); break;
    case 'final': addFinal(msg.text, msg.speaker); break;
    case 'vad':
      logLine(msg.event === 'speech_end' ? `speech_end (${msg.duration}s)` : msg.event, ui.vadEvents);
      break;
    case 'speaker_register_progress':
    case 'speaker_register_result':
    case 'speaker_verify_result':
    case 'speaker_verify_enabled':
    case 'speaker_verify_disabled':
    case 'speaker_list':
      logLine(describeSpeaker(msg), ui.speakerEvents);
      break;
    case 'error':
      showError(`${msg.message || msg.error || 'error'}${msg.code !== undefined ? ` (code ${msg.code})` : ''}`);
      break;
    default:
      logLine(`${msg.type}${msg.message ? `: ${msg.message}` : ''}`);
  }
}

function describeSpeaker(msg) {
  switch (msg.type) {
    case 'speaker_register_result':
      return msg.success ? `registered ${msg.user_id} (${msg.duration}s of audio)` : `registration failed: ${msg.message || ''}`;
    case 'speaker_verify_result':
      return `${msg.success ? 'verified' : 'NOT verified'} ${msg.user_id}: score ${Number(msg.score).toFixed(3)} (threshold ${msg.threshold})`;
    case 'speaker_list':
      return `speakers (${msg.count}): ${(msg.speakers || []).map((s) => s.user_id).join(', ') || 'none'}`;
    case 'speaker_verify_enabled':
      return `verification on for ${msg.user_id}${msg.required ? ' (required)' : ''}`;
    case 'speaker_verify_disabled':
      return 'verification off';
    default:
      return msg.message || msg.state || msg.type;
  }
}

// ------------------------------------------------------------------ live protocols
// Each adapter: path(), start(ws, language) → frame sink, stop(ws), message(msg) → handled?

function batched(send, frames = 5) {  // 5 × 20 ms = 100 ms per message
  let pending = [];
  const sink = (frame) => {
    pending.push(frame);
    if (pending.length >= frames) { send(concatInt16(pending)); pending = []; }
  };
  sink.flush = () => { if (pending.length) { send(concatInt16(pending)); pending = []; } };
  return sink;
}

const live = {
  ptt: {
    path: () => '/ws/asr',
    start(ws) {
      ws.send(JSON.stringify({ type: 'control', command: 'start', timestamp: Date.now() }));
      return batched((pcm) => ws.send(JSON.stringify({ type: 'audio', data: int16ToBase64(pcm), timestamp: Date.now() })));
    },
    stop(ws, sink) {
      sink.flush();
      ws.send(JSON.stringify({ type: 'control', command: 'stop', timestamp: Date.now() }));
    },
  },
  streaming_stt: {
    path: () => '/',
    start(ws, language) {
      ws.send(JSON.stringify(language ? { command: 'start', language } : { command: 'start' }));
      return (frame) => ws.send(frame.buffer);
    },
    stop(ws) { ws.send(JSON.stringify({ command: 'stop' })); },
  },
  vad_stream: {
    path: () => '/',
    start(ws) { return (frame) => ws.send(frame.buffer); },
    stop() {},
  },
  session_broadcast: {
    path: () => `/ws/asr/${encodeURIComponent($('session-id').value.trim() || 'demo')}?mode=sender`,
    start(ws) { return (frame) => ws.send(int16ToFloat32(frame).buffer); },  // float32 PCM
    stop(ws) { ws.send('close'); },
    message(msg) {
      if (typeof msg.asr === 'string') {
        const spk = msg.spk || {};
        addFinal(msg.asr, spk.speaker_name || spk.speaker_id || 'unknown');
        return true;
      }
      if (msg.type === 'error') { showError(`${msg.message} (code ${msg.code})`); return true; }
      if (msg.type === 'closed') { logLine(`session ${msg.session_id} closed: ${msg.results} results, ${msg.audio_s} s`); return true; }
      return false;
    },
  },
  funasr_runtime: {
    path: () => '/',
    start(ws, language) {
      this.online = '';
      ws.send(JSON.stringify({
        mode: '2pass', wav_name: 'browser', wav_format: 'pcm', audio_fs: 16000, is_speaking: true,
        chunk_size: [5, 10, 5], chunk_interval: 10, itn: true, svs_lang: language || 'auto',
      }));
      return batched((pcm) => ws.send(pcm.buffer), 3);  // 60 ms chunks, as FunASR's client
    },
    stop(ws, sink) {
      sink.flush();
      ws.send(JSON.stringify({ is_speaking: false }));
    },
    message(msg) {
      if (msg.error !== undefined) { showError(`${msg.error}${msg.code ? ` (code ${msg.code})` : ''}`); return true; }
      if (msg.mode === '2pass-online' || (msg.mode === 'online' && !msg.is_final)) {
        this.online += msg.text || '';
        showPartial(this.online);
      } else if (msg.mode === 'online') {  // a sentence's last piece completes it
        addFinal(this.online + (msg.text || ''));
        this.online = '';
      } else if (msg.mode === '2pass-offline' || msg.mode === 'offline') {  // replaces the pieces
        this.online = '';
        addFinal(msg.text);
      }
      if (msg.is_end) logLine('input finished');
      return true;
    },
  },
  openai_api: {
    path: () => '/v1/realtime?intent=transcription',
    start(ws, language) {
      this.items = {};
      this.speaking = false;
      this.uncommitted = 0;
      const transcription = { model: 'whisper-1' };
      if (language) transcription.language = language;
      ws.send(JSON.stringify({
        type: 'session.update',
        session: { type: 'transcription', audio: { input: {
          format: { type: 'audio/pcm', rate: 24000 }, transcription, turn_detection: { type: 'server_vad' },
        } } },
      }));
      const state = {};
      return batched((pcm) => {
        this.uncommitted += pcm.length;
        const audio = int16ToBase64(upsample16to24(pcm, state));
        ws.send(JSON.stringify({ type: 'input_audio_buffer.append', audio }));
      });
    },
    stop(ws, sink) {
      sink.flush();
      // Server VAD commits each utterance at its pause; one still running is committed now.
      if (this.speaking || this.uncommitted >= 0.3 * 16000) ws.send(JSON.stringify({ type: 'input_audio_buffer.commit' }));
    },
    message(msg) {
      switch (msg.type) {
        case 'conversation.item.input_audio_transcription.delta':
          this.items[msg.item_id] = (this.items[msg.item_id] || '') + msg.delta;
          showPartial(this.items[msg.item_id]);
          return true;
        case 'conversation.item.input_audio_transcription.completed':
          delete this.items[msg.item_id];
          addFinal(msg.transcript);
          return true;
        case 'conversation.item.input_audio_transcription.failed':
          showError(`transcription failed: ${(msg.error || {}).message || ''}`);
          return true;
        case 'input_audio_buffer.speech_started': this.speaking = true; logLine('speech started'); return true;
        case 'input_audio_buffer.speech_stopped': this.speaking = false; logLine('speech stopped'); return true;
        case 'input_audio_buffer.committed': this.uncommitted = 0; return true;
        case 'error': {
          const err = msg.error || {};
          showError(`${err.message || 'error'}${err.code ? ` (code ${err.code})` : ''}`);
          return true;
        }
        default:
          logLine(msg.type);
          return true;
      }
    },
  },
};

async function startLive() {
  const protocol = ui.protocol.value;
  const adapter = live[protocol];
  if (!adapter) { showError(`${protocol} has no microphone mode on this page`); return; }
  showError('');
  ui.start.disabled = true;
  try {
    const ws = await connect(protocol, adapter.path());
    const sink = adapter.start(ws, ui.language.value);
    session = { ws, sink, protocol };
    await startMic((frame) => { if (ws.readyState === WebSocket.OPEN) sink(frame); });
    ui.stop.disabled = false;
    setState('open', `listening (${protocol})`);
  } catch (err) {
    ui.start.disabled = false;
    session = null;
    showError(err.message || String(err));
  }
}

async function stopLive() {
  const current = session;
  await stopMic();
  ui.start.disabled = false;
  ui.stop.disabled = true;
  if (!current) return;
  const { ws, sink, protocol } = current;
  if (ws.readyState === WebSocket.OPEN) {
    try { live[protocol].stop(ws, sink); } catch (err) { showError(err.message || String(err)); }
    setState('open', `connected to ${protocol}`);
  }
  session = null;
}

// ------------------------------------------------------------------ speakers (9200)

async function speakerCommand(body) {
  const ws = await connect('vad_stream', '/');
  ws.send(JSON.stringify(body));
  return ws;
}

async function registerSpeaker() {
  if (registering) return;
  registering = true;
  const userId = $('user-id').value.trim();
  try {
    const ws = await speakerCommand({ command: 'speaker_register_start', user_id: userId });
    await startMic((frame) => { if (ws.readyState === WebSocket.OPEN) ws.send(frame.buffer); });
    logLine(`recording 5 s for ${userId}…`, ui.speakerEvents);
    await new Promise((r) => setTimeout(r, 5000));
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ command: 'speaker_register_end' }));
    if (ui.stop.disabled) await stopMic();
  } catch (err) {
    showError(err.message || String(err));
  } finally {
    registering = false;
  }
}

// ------------------------------------------------------------------ subtitles and downloads

function clock(seconds, sep) {
  const ms = Math.max(0, Math.round(seconds * 1000));
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(Math.floor(ms / 3600000))}:${p(Math.floor(ms / 60000) % 60)}:${p(Math.floor(ms / 1000) % 60)}${sep}${p(ms % 1000, 3)}`;
}

// One cue per segment: only for results the server sent without subtitles of its own.
function srtFromSegments(segments) {
  return segments.map((s, i) => `${i + 1}\n${clock(s.start, ',')} --> ${clock(s.end, ',')}\n${s.speaker ? `<${s.speaker}>` : ''}${String(s.text).trim()}\n`).join('\n');
}

function srtToVtt(srt) {  // same cues; <speaker_N> becomes a WebVTT voice span
  const cues = srt.replace(/\r/g, '').trim().split(/\n\n+/).filter(Boolean).map((block) => {
    const lines = block.split('\n');
    if (/^\d+$/.test(lines[0])) lines.shift();
    lines[0] = lines[0].replace(/,(\d{3})/g, '.$1');
    if (lines[1]) lines[1] = lines[1].replace(/^<(speaker_[^>]+)>/, '<v $1>');
    return lines.join('\n');
  });
  return `WEBVTT\n\n${cues.join('\n\n')}\n`;
}

function vttToSrt(vtt) {
  const blocks = vtt.replace(/\r/g, '').split(/\n\n+/).filter((b) => b.includes('-->'));
  return blocks.map((block, i) => {
    const lines = block.split('\n');
    while (!lines[0].includes('-->')) lines.shift();
    lines[0] = lines[0].replace(/\.(\d{3})/g, ',$1');
    if (lines[1]) lines[1] = lines[1].replace(/^<v ([^>]+)>/, '<$1>');
    return `${i + 1}\n${lines.join('\n')}\n`;
  }).join('\n');
}

function segmentsFromSubtitles(doc) {
  const seconds = (t) => t.replace(',', '.').split(':').reduce((acc, x) => acc * 60 + Number(x), 0);
  const out = [];
  for (const block of doc.replace(/\r/g, '').split(/\n\n+/)) {
    const lines = block.split('\n');
    const at = lines.findIndex((l) => l.includes('-->'));
    if (at < 0) continue;
    const [a, b] = lines[at].split('-->').map((s) => s.trim().split(' ')[0]);
    let text = lines.slice(at + 1).join(' ');
    let speaker;
    const tag = text.match(/^<(?:v )?([^>]+)>/);
    if (tag) { speaker = tag[1]; text = text.slice(tag[0].length); }
    out.push({ start: seconds(a), end: seconds(b), text, ...(speaker ? { speaker } : {}) });
  }
  return out;
}

function showTranscriptResult({ format, srt, json, segments }) {
  const list = $('file-segments');
  list.textContent = '';
  for (const s of segments) list.appendChild(transcriptLine(String(s.text).trim(), s.speaker));
  const vtt = srtToVtt(srt);
  $('file-result').textContent = format === 'srt' ? srt : format === 'vtt' ? vtt : JSON.stringify(json, null, 2);
  const links = $('downloads');
  links.textContent = '';
  const add = (name, text, type) => {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([text], { type }));
    a.download = name;
    a.textContent = `Download ${name}`;
    links.appendChild(a);
  };
  add('transcript.srt', srt, 'application/x-subrip');
  add('transcript.vtt', vtt, 'text/vtt');
  add('transcript.json', JSON.stringify(json, null, 2), 'application/json');
}

function resetFileUi() {
  showError('');
  $('upload-progress').value = 0;
  $('task-progress').value = 0;
  $('task-status').textContent = '';
  $('file-result').textContent = '';
  $('file-segments').textContent = '';
  $('downloads').textContent = '';
}

// ------------------------------------------------------------------ file upload (8767)

const file = { waiters: [], format: 'json' };

function handleFileMessage(msg) {
  const data = msg.data || {};
  if (msg.type === 'chunk_received') {
    $('upload-progress').value = data.progress || 0;
  } else if (msg.type === 'task_queued') {
    $('task-status').textContent = `queued (position ${data.queue_position}, about ${data.estimated_wait_minutes} min)`;
  } else if (msg.type === 'task_progress') {
    $('task-progress').value = data.progress || 0;
    $('task-status').textContent = data.message || data.status || '';
  } else if (msg.type === 'task_complete') {
    $('task-progress').value = 100;
    $('task-status').textContent = 'done';
    showFileResult(data.result || {});
  } else if (msg.type === 'error') {
    showError(`${data.error || msg.code || 'error'}: ${data.message || msg.message || ''}`);
  } else if (msg.type === 'upload_complete') {
    $('upload-progress').value = 100;
  }
  const waiters = file.waiters;
  file.waiters = [];
  waiters.forEach((w) => w(msg));
}

function nextFileMessage(types) {
  return new Promise((resolve, reject) => {
    const wait = (msg) => {
      if (msg.type === 'error') reject(new Error(`${(msg.data || {}).error || msg.code}: ${(msg.data || {}).message || msg.message}`));
      else if (types.includes(msg.type)) resolve(msg);
      else file.waiters.push(wait);
    };
    file.waiters.push(wait);
  });
}

function showFileResult(result) {
  const segments = result.segments || [];
  const srt = result.format === 'srt' && typeof result.text === 'string' ? result.text : srtFromSegments(segments);
  const json = result.format === 'srt' ? { ...result, text: segments.map((s) => s.text).join(' ') } : result;
  showTranscriptResult({ format: file.format, srt, json, segments });
}

async function uploadToFileProtocol(chosen) {
  const bytes = new Uint8Array(await chosen.arrayBuffer());
  const md5 = (b) => SparkMD5.ArrayBuffer.hash(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  file.format = $('file-format').value;
  const welcome = nextFileMessage(['connected']);
  const ws = await connect('file_transcription', '/');
  if (!file.sawWelcome) { await welcome; file.sawWelcome = true; }
  const request = {
    file_name: chosen.name, file_size: bytes.length, file_hash: md5(bytes),
    output_format: file.format === 'json' ? 'json' : 'srt',  // VTT: the server's SRT cues, converted
    force_refresh: false,
  };
  const chunkSize = 1024 * 1024;
  const chunked = bytes.length > 5 * 1024 * 1024;
  if (chunked) Object.assign(request, { chunk_size: chunkSize, total_chunks: Math.ceil(bytes.length / chunkSize), upload_mode: 'chunked' });
  ws.send(JSON.stringify({ type: 'upload_request', data: request }));
  const ready = await nextFileMessage(['upload_ready', 'task_complete']);
  if (ready.type === 'task_complete') return;  // cached result
  const taskId = ready.data.task_id;
  if (!chunked) {
    ws.send(JSON.stringify({ type: 'upload_data', data: { task_id: taskId, file_data: bytesToBase64(bytes) } }));
  } else {
    for (let index = 0; index * chunkSize < bytes.length; index++) {
      const part = bytes.subarray(index * chunkSize, (index + 1) * chunkSize);
      ws.send(JSON.stringify({
        type: 'upload_chunk',
        data: {
          task_id: taskId, chunk_index: index, chunk_size: part.length, chunk_hash: md5(part),
          chunk_data: bytesToBase64(part), is_last: (index + 1) * chunkSize >= bytes.length,
        },
      }));
      await nextFileMessage(['chunk_received']);
    }
  }
  await nextFileMessage(['task_complete']);
}

// ------------------------------------------------------------------ file upload (OpenAI API, 8080)

function uploadToOpenAI(chosen) {
  const format = $('file-format').value;
  const form = new FormData();
  form.append('file', chosen, chosen.name);
  form.append('model', 'whisper-1');
  form.append('response_format', format === 'json' ? 'verbose_json' : format);
  if (ui.language.value) form.append('language', ui.language.value);
  const url = httpUrl('openai_api', '/v1/audio/transcriptions');
  ui.endpoint.textContent = url;
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', url);
    if (token) xhr.setRequestHeader('Authorization', `Bearer ${token}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) $('upload-progress').value = (100 * e.loaded) / e.total; };
    xhr.upload.onload = () => {
      $('upload-progress').value = 100;
      $('task-status').textContent = 'transcribing…';
      $('task-progress').removeAttribute('value');  // indeterminate: the API reports no progress
    };
    xhr.onerror = () => reject(new Error(`cannot reach ${url}${notEnabled('openai_api') || ' — is the OpenAI API protocol enabled?'}`));
    xhr.onload = () => {
      if (xhr.status !== 200) {
        let message = xhr.responseText;
        try { message = JSON.parse(xhr.responseText).error.message; } catch (e) { /* plain text */ }
        $('task-progress').value = 0;
        reject(new Error(`${xhr.status}: ${message}`));
        return;
      }
      $('task-progress').value = 100;
      $('task-status').textContent = 'done';
      const body = xhr.responseText;
      if (format === 'json') {
        const json = JSON.parse(body);
        const segments = json.segments || [];
        showTranscriptResult({ format, json, segments, srt: srtFromSegments(segments) });
      } else {
        const srt = format === 'srt' ? body : vttToSrt(body);
        const segments = segmentsFromSubtitles(body);
        showTranscriptResult({ format, srt, segments, json: { text: segments.map((s) => s.text).join(' '), segments } });
      }
      resolve();
    };
    xhr.send(form);
  });
}

async function uploadFile() {
  const chosen = $('file').files[0];
  if (!chosen) { showError('choose a file first'); return; }
  resetFileUi();
  $('upload').disabled = true;
  try {
    if (ui.protocol.value === 'openai_api') await uploadToOpenAI(chosen);
    else await uploadToFileProtocol(chosen);
  } catch (err) {
    showError(err.message || String(err));
  } finally {
    $('upload').disabled = false;
  }
}

// ------------------------------------------------------------------ wiring

function showPanels() {
  const protocol = ui.protocol.value;
  const spec = PROTOCOLS[protocol] || {};
  ui.livePanel.hidden = !spec.live;
  ui.filePanel.hidden = !spec.file;
  ui.vadPanel.hidden = !spec.vad;
  ui.broadcastRow.hidden = protocol !== 'session_broadcast';
  ui.language.disabled = !spec.language;
  ui.languageNote.textContent = spec.language ? '' : 'set by the server for this protocol ([protocols] language)';
  ui.endpoint.textContent = spec.live ? shown(wsUrl(protocol, live[protocol].path()))
    : protocol === 'file_transcription' ? shown(wsUrl(protocol, '/')) : '';
  ui.info.textContent = notEnabled(protocol).replace(/^ — /, '');
}

ui.protocol.addEventListener('change', async () => {
  if (!ui.stop.disabled) await stopLive();
  if (socket) socket.close(1000);
  showPanels();
});
ui.start.addEventListener('click', startLive);
ui.stop.addEventListener('click', stopLive);
$('token-apply').addEventListener('click', applyToken);
ui.token.addEventListener('keydown', (e) => { if (e.key === 'Enter') applyToken(); });
$('session-id').addEventListener('change', showPanels);
$('register').addEventListener('click', registerSpeaker);
$('verify-on').addEventListener('click', () => speakerCommand({
  command: 'speaker_verify_enable', user_id: $('user-id').value.trim(), required: $('verify-required').checked,
}).catch((err) => showError(err.message)));
$('verify-off').addEventListener('click', () => speakerCommand({ command: 'speaker_verify_disable' }).catch((err) => showError(err.message)));
$('speaker-list').addEventListener('click', () => speakerCommand({ command: 'speaker_list' }).catch((err) => showError(err.message)));
$('upload').addEventListener('click', uploadFile);
window.addEventListener('unhandledrejection', (e) => showError(String((e.reason && e.reason.message) || e.reason)));
window.addEventListener('error', (e) => showError(`page error: ${e.message}`));

(async () => {
  const wanted = params.get('protocol');
  if (wanted && [...ui.protocol.options].some((o) => o.value === wanted)) ui.protocol.value = wanted;
  if (params.get('language')) ui.language.value = params.get('language');
  await loadServices();
  if (!wanted && enabled && !enabled.has(ui.protocol.value)) {
    const first = [...ui.protocol.options].find((o) => !o.disabled);
    if (first) ui.protocol.value = first.value;
  }
  showPanels();
  document.body.dataset.ready = 'true';
})();
