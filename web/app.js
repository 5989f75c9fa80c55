// asrhub demo page: one static file, no build step.
// Captures the microphone through an AudioWorklet (16 kHz int16 frames), talks to the
// protocol chosen in the page, and shows partial/final text, VAD events, speaker
// registration/verification and file transcription with progress.
'use strict';

const DEFAULT_PORTS = { ptt: 9999, streaming_stt: 8765, vad_stream: 9200, file_transcription: 8767 };
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get('token');

const ui = {
  protocol: $('protocol'), endpoint: $('endpoint'), state: $('conn-state'),
  start: $('start'), stop: $('stop'), level: document.querySelector('#level span'),
  partial: $('partial'), finals: $('finals'), error: $('error'), log: $('log'),
  vadPanel: $('vad-panel'), vadEvents: $('vad-events'), speakerEvents: $('speaker-events'),
  livePanel: $('live-panel'), filePanel: $('file-panel'),
};

let ports = { ...DEFAULT_PORTS };
let socket = null;       // the open WebSocket for the chosen protocol
let mic = null;          // { context, stream, node }
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

function addFinal(text) {
  if (!text) return;
  const li = document.createElement('li');
  li.textContent = text;
  ui.finals.appendChild(li);
  ui.partial.textContent = '';
}

function wsUrl(protocol, path = '/') {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const host = location.hostname || '127.0.0.1';
  const query = token ? `?token=${encodeURIComponent(token)}` : '';
  return `${scheme}://${host}:${ports[protocol]}${path}${query}`;
}

function closeReason(event) {
  const known = {
    1000: 'closed normally', 1001: 'the server is shutting down', 1006: 'the connection dropped',
    1008: 'the server refused the connection', 1009: 'a message was too large',
    1011: 'the server hit an internal error',
  };
  const why = event.reason ? `: ${event.reason}` : '';
  return `${known[event.code] || `closed (code ${event.code})`}${why}`;
}

function int16ToBase64(samples) {
  const bytes = new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength);
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function concatInt16(frames) {
  const total = frames.reduce((n, f) => n + f.length, 0);
  const out = new Int16Array(total);
  let offset = 0;
  for (const f of frames) { out.set(f, offset); offset += f.length; }
  return out;
}

async function loadPorts() {
  try {
    const response = await fetch(`/services${token ? `?token=${encodeURIComponent(token)}` : ''}`);
    if (!response.ok) return;
    const info = await response.json();
    for (const p of info.protocols || []) ports[p.name] = p.port;
    const names = new Set((info.protocols || []).map((p) => p.name));
    for (const option of ui.protocol.options) {
      option.disabled = names.size > 0 && !names.has(option.value);
      option.textContent = option.textContent.replace(/\(\d+\)/, `(${ports[option.value]})`);
    }
  } catch (err) {
    logLine('service list not available; using the default ports');
  }
}

// ------------------------------------------------------------------ microphone

async function startMic(onFrame) {
  frameSink = onFrame;
  if (mic) return;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error('this browser cannot capture audio here (a secure origin — https or localhost — is needed)');
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
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
    ui.level.style.width = `${Math.min(100, Math.sqrt(energy / frame.length) * 400)}%`;
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
}

// ------------------------------------------------------------------ connections

function connect(protocol, path = '/') {
  return new Promise((resolve, reject) => {
    if (socket && socket.readyState === WebSocket.OPEN && socket.asrhubProtocol === protocol) {
      resolve(socket);
      return;
    }
    if (socket) socket.close();
    const url = wsUrl(protocol, path);
    ui.endpoint.textContent = url;
    setState('connecting', 'connecting…');
    const ws = new WebSocket(url);
    ws.asrhubProtocol = protocol;
    ws.binaryType = 'arraybuffer';
    socket = ws;
    let opened = false;
    ws.onopen = () => { opened = true; setState('open', `connected to ${protocol}`); showError(''); resolve(ws); };
    ws.onerror = () => {
      if (!opened) {
        setState('error', 'cannot connect');
        reject(new Error(`cannot reach ${url} — is asrhub running with this protocol enabled?`));
      }
    };
    ws.onclose = (event) => {
      if (socket === ws) socket = null;
      setState(event.code === 1000 ? 'idle' : 'error', `disconnected: ${closeReason(event)}`);
      if (event.code !== 1000 && opened) showError(`connection ${closeReason(event)}`);
      ui.start.disabled = false;
      ui.stop.disabled = true;
    };
    ws.onmessage = (event) => handleMessage(protocol, event);
  });
}

function handleMessage(protocol, event) {
  if (typeof event.data !== 'string') return;
  let msg;
  try { msg = JSON.parse(event.data); } catch (err) { logLine(`non-JSON message: ${event.data}`); return; }
  if (protocol === 'file_transcription') { handleFileMessage(msg); return; }
  switch (msg.type) {
    case 'result':
      if (protocol === 'ptt' && msg.mode === 'partial') ui.partial.textContent = msg.text;
      else if (msg.is_final === false) ui.partial.textContent = msg.text;
      else addFinal(msg.text);
      break;
    case 'partial': ui.partial.textContent = msg.text; break;
    case 'final': addFinal(msg.text); break;
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
      showError(`${msg.message}${msg.code !== undefined ? ` (code ${msg.code})` : ''}`);
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

const live = {
  ptt: {
    path: '/ws/asr',
    start(ws) {
      ws.send(JSON.stringify({ type: 'control', command: 'start', timestamp: Date.now() }));
      let pending = [];
      return (frame) => {
        pending.push(frame);
        if (pending.length >= 5) {   // 100 ms per message
          ws.send(JSON.stringify({ type: 'audio', data: int16ToBase64(concatInt16(pending)), timestamp: Date.now() }));
          pending = [];
        }
      };
    },
    stop(ws) { ws.send(JSON.stringify({ type: 'control', command: 'stop', timestamp: Date.now() })); },
  },
  streaming_stt: {
    path: '/',
    start(ws) {
      ws.send(JSON.stringify({ command: 'start' }));
      return (frame) => ws.send(frame.buffer);
    },
    stop(ws) { ws.send(JSON.stringify({ command: 'stop' })); },
  },
  vad_stream: {
    path: '/',
    start(ws) { return (frame) => ws.send(frame.buffer); },
    stop() {},
  },
};

async function startLive() {
  const protocol = ui.protocol.value;
  const adapter = live[protocol];
  showError('');
  ui.start.disabled = true;
  try {
    const ws = await connect(protocol, adapter.path);
    const sink = adapter.start(ws);
    await startMic((frame) => { if (ws.readyState === WebSocket.OPEN) sink(frame); });
    ui.stop.disabled = false;
    setState('open', `listening (${protocol})`);
  } catch (err) {
    ui.start.disabled = false;
    showError(err.message || String(err));
  }
}

async function stopLive() {
  const protocol = ui.protocol.value;
  await stopMic();
  if (socket && socket.readyState === WebSocket.OPEN) live[protocol].stop(socket);
  ui.start.disabled = false;
  ui.stop.disabled = true;
  setState('open', `connected to ${protocol}`);
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

// ------------------------------------------------------------------ file upload (8767)

const file = { ws: null, taskId: null, format: 'json', waiters: [] };

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
    showError(`${data.error || 'error'}: ${data.message || ''}`);
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
      if (msg.type === 'error') reject(new Error(`${(msg.data || {}).error}: ${(msg.data || {}).message}`));
      else if (types.includes(msg.type)) resolve(msg);
      else file.waiters.push(wait);
    };
    file.waiters.push(wait);
  });
}

function srtFromSegments(segments) {
  const clock = (s) => {
    const ms = Math.round(s * 1000);
    const p = (n, w = 2) => String(n).padStart(w, '0');
    return `${p(Math.floor(ms / 3600000))}:${p(Math.floor(ms / 60000) % 60)}:${p(Math.floor(ms / 1000) % 60)},${p(ms % 1000, 3)}`;
  };
  return segments.map((s, i) => `${i + 1}\n${clock(s.start)} --> ${clock(s.end)}\n${s.speaker ? `<${s.speaker}>` : ''}${s.text}\n`).join('\n');
}

function showFileResult(result) {
  const srt = typeof result.srt === 'string' ? result.srt
    : (typeof result.content === 'string' ? result.content : srtFromSegments(result.segments || []));
  $('file-result').textContent = result.format === 'srt' ? srt : (result.text || '');
  const links = $('downloads');
  links.textContent = '';
  const add = (name, text, type) => {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([text], { type }));
    a.download = name;
    a.textContent = `Download ${name}`;
    a.style.marginRight = '1rem';
    links.appendChild(a);
  };
  add('transcript.json', JSON.stringify(result, null, 2), 'application/json');
  add('transcript.srt', srt, 'text/plain');
}

async function uploadFile() {
  const chosen = $('file').files[0];
  if (!chosen) { showError('choose a file first'); return; }
  showError('');
  $('upload-progress').value = 0;
  $('task-progress').value = 0;
  $('file-result').textContent = '';
  const bytes = new Uint8Array(await chosen.arrayBuffer());
  const md5 = (b) => SparkMD5.ArrayBuffer.hash(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  const base64 = (b) => {
    let s = '';
    for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000));
    return btoa(s);
  };
  try {
    const welcome = nextFileMessage(['connected']);
    const ws = await connect('file_transcription', '/');
    if (!file.sawWelcome) { await welcome; file.sawWelcome = true; }
    const format = $('file-format').value;
    const request = {
      file_name: chosen.name, file_size: bytes.length, file_hash: md5(bytes),
      output_format: format, force_refresh: false,
    };
    const chunkSize = 1024 * 1024;
    const chunked = bytes.length > 5 * 1024 * 1024;
    if (chunked) Object.assign(request, { chunk_size: chunkSize, total_chunks: Math.ceil(bytes.length / chunkSize), upload_mode: 'chunked' });
    ws.send(JSON.stringify({ type: 'upload_request', data: request }));
    const ready = await nextFileMessage(['upload_ready', 'task_complete']);
    if (ready.type === 'task_complete') return;  // cached result
    const taskId = ready.data.task_id;
    if (!chunked) {
      ws.send(JSON.stringify({ type: 'upload_data', data: { task_id: taskId, file_data: base64(bytes) } }));
    } else {
      for (let index = 0; index * chunkSize < bytes.length; index++) {
        const part = bytes.subarray(index * chunkSize, (index + 1) * chunkSize);
        ws.send(JSON.stringify({
          type: 'upload_chunk',
          data: {
            task_id: taskId, chunk_index: index, chunk_size: part.length, chunk_hash: md5(part),
            chunk_data: base64(part), is_last: (index + 1) * chunkSize >= bytes.length,
          },
        }));
        await nextFileMessage(['chunk_received']);
      }
    }
    await nextFileMessage(['task_complete']);
  } catch (err) {
    showError(err.message || String(err));
  }
}

// ------------------------------------------------------------------ wiring

function showPanels() {
  const protocol = ui.protocol.value;
  const isFile = protocol === 'file_transcription';
  ui.livePanel.hidden = isFile;
  ui.filePanel.hidden = !isFile;
  ui.vadPanel.hidden = protocol !== 'vad_stream';
  ui.endpoint.textContent = wsUrl(protocol, isFile ? '/' : live[protocol].path);
}

ui.protocol.addEventListener('change', async () => {
  if (!ui.stop.disabled) await stopLive();
  if (socket) socket.close(1000);
  showPanels();
});
ui.start.addEventListener('click', startLive);
ui.stop.addEventListener('click', stopLive);
$('register').addEventListener('click', registerSpeaker);
$('verify-on').addEventListener('click', () => speakerCommand({
  command: 'speaker_verify_enable', user_id: $('user-id').value.trim(), required: $('verify-required').checked,
}).catch((err) => showError(err.message)));
$('verify-off').addEventListener('click', () => speakerCommand({ command: 'speaker_verify_disable' }).catch((err) => showError(err.message)));
$('speaker-list').addEventListener('click', () => speakerCommand({ command: 'speaker_list' }).catch((err) => showError(err.message)));
$('upload').addEventListener('click', uploadFile);

(async () => {
  const wanted = params.get('protocol');
  if (wanted && [...ui.protocol.options].some((o) => o.value === wanted)) ui.protocol.value = wanted;
  await loadPorts();
  showPanels();
})();
