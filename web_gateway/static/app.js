// Voicebus page: push-to-talk over a WebSocket, answers streamed as text and PCM16 audio.
// Plain JavaScript, no build step. Protocol: see the README ("WebSocket /ws").
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "voicebus.token";
  const CONVERSATION_KEY = "voicebus.conversation";

  // Observable state (tests read it; handy in the console too).
  const vb = window.voicebus = {
    state: "connecting", conversationId: null, lastTranscript: "", lastResponse: "",
    chunksReceived: 0, chunksScheduled: 0, chunksPlayed: 0, turnsFinished: 0, interruptions: 0, interruptsSent: 0,
    playbackReports: 0, endOfAudioSent: 0, pauses: 0, resumes: 0, playingAfterInterrupt: [],
    lastTurn: null, lastBargeIn: null, errors: [], events: [],
    // Event types in arrival order, per turn id: a turn's list is complete however long its
    // answer, where the bounded `events` log above can lose a long turn's start.
    turnEvents: {},
  };

  // ---- small helpers ---------------------------------------------------------
  const hex = (bytes) => Array.from(crypto.getRandomValues(new Uint8Array(bytes)),
    (b) => b.toString(16).padStart(2, "0")).join("");
  const traceparent = () => `00-${hex(16)}-${hex(8)}-01`;
  const token = () => localStorage.getItem(TOKEN_KEY) || "";

  function setState(state) {
    vb.state = state;
    const labels = { connecting: "Connecting…", idle: handsFree.active ? "Hands-free: listening" : "Ready",
      listening: "Listening…", thinking: "Thinking…", speaking: "Speaking…", offline: "Offline — reconnecting",
      locked: "Token needed" };
    $("status").textContent = labels[state] || state;
    $("status").dataset.state = state;
    const talk = $("talk");
    talk.classList.toggle("recording", state === "listening");
    talk.classList.toggle("interrupt", state === "speaking" || state === "thinking");
    talk.disabled = handsFree.active; // its recording would cut into the hands-free one
    $("handsfree").setAttribute("aria-pressed", String(handsFree.active));
    $("talk-label").textContent = state === "listening" ? "Release to send"
      : (state === "speaking" || state === "thinking") ? "Hold to interrupt" : "Hold to talk";
  }

  function showError(message) {
    vb.errors.push(message);
    $("error-text").textContent = message;
    $("error").hidden = false;
  }
  const clearError = () => { $("error").hidden = true; };

  async function api(path, options = {}) {
    const headers = { traceparent: traceparent(), ...(options.headers || {}) };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    let reply;
    try {
      reply = await fetch(path, { ...options, headers });
    } catch (err) {
      throw new Error("The gateway cannot be reached. Is it running?");
    }
    if (reply.status === 401) askForToken("The gateway needs an access token.");
    if (!reply.ok) {
      let message = `${reply.status} ${reply.statusText}`;
      try { message = (await reply.json()).error.message || message; } catch (_) { /* not JSON */ }
      const error = new Error(message);
      error.status = reply.status;
      throw error;
    }
    return reply.status === 204 ? null : reply.json();
  }

  // ---- audio out: PCM16 chunks scheduled back to back (audio.js) -------------
  const player = new window.VoicebusAudio.ChunkPlayer();
  player.onChunkScheduled = () => { vb.chunksScheduled++; };
  player.onChunkPlayed = (allDone) => {
    vb.chunksPlayed++;
    if (allDone) reportPlayback();  // the server's turn ends when its audio has played here
    if (allDone && vb.state === "speaking" && !turnRunning) setState("idle");
  };
  // The server keeps a clock of what we play (the `start` says "playback": "realtime"); what
  // we really played corrects it: a late start, a busy tab.
  function reportPlayback() {
    const played = player.played(player.turnId);
    if (played === null || !turnRunning || !ws || ws.readyState !== WebSocket.OPEN || !started) return;
    send({ type: "playback", turn_id: player.turnId, played_ms: Math.round(played * 1000) });
    vb.playbackReports++;
  }
  setInterval(() => { if (player.playing) reportPlayback(); }, 500);

  // ---- the WebSocket --------------------------------------------------------------
  let ws = null;
  let started = false;        // a `start` went out on this socket
  let pendingAudio = null;    // the JSON header of the binary frame that comes next
  let turnRunning = false;    // the server is working on a turn
  let mutedTurns = new Set(); // turns the user interrupted: drop their late audio
  let retryDelay = 500;
  let turnWaiters = [];       // resolved when the running turn ends

  function connect() {
    const url = new URL("/ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const protocols = ["voicebus.v1"];
    if (token()) {
      if (/^[A-Za-z0-9._~+\/=-]+$/.test(token())) protocols.push(`bearer.${token()}`);
      else url.searchParams.set("token", token());
    }
    ws = new WebSocket(url, protocols);
    ws.binaryType = "arraybuffer";
    started = false;
    ws.onopen = () => { retryDelay = 500; setState("idle"); };
    ws.onmessage = (message) => onMessage(message.data);
    ws.onclose = (event) => {
      ws = null;
      started = false;
      handsFree.stop(); // its recording went to the stream that ended
      endTurn();
      if (event.code === 4401) {
        setState("locked");
        askForToken(token() ? "The gateway refused this access token." : "This gateway needs an access token.");
        return;
      }
      setState("offline");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 8000);
    };
  }

  function waitOpen() {
    if (ws && ws.readyState === WebSocket.OPEN) return Promise.resolve();
    if (!ws) connect();
    return new Promise((resolve, reject) => {
      const started = Date.now();
      const check = () => {
        if (ws && ws.readyState === WebSocket.OPEN) resolve();
        else if (Date.now() - started > 5000) reject(new Error("Not connected to the gateway."));
        else setTimeout(check, 50);
      };
      check();
    });
  }

  function send(message) { ws.send(JSON.stringify(message)); }

  async function ensureStarted() {
    await waitOpen();
    if (started) return;
    send({ type: "start", conversation_id: vb.conversationId || undefined, format: recorderFormat().format,
      output_format: "pcm16", playback: "realtime", traceparent: traceparent() });
    started = true;
  }

  function onMessage(data) {
    if (typeof data !== "string") {
      const header = pendingAudio;
      pendingAudio = null;
      if (!header) return;
      vb.chunksReceived++;
      if (mutedTurns.has(header.turn_id)) return;
      if (vb.state === "thinking") setState("speaking");
      player.play(header, data).catch((err) => showError(`Cannot play the answer: ${err.message}`));
      return;
    }
    const event = JSON.parse(data);
    recordEvent(event);
    const handler = handlers[event.type];
    if (handler) handler(event);
  }

  const KEPT_TURN_EVENTS = 50;  // turns whose event lists stay in vb.turnEvents
  const recordedTurns = [];     // their ids, oldest first

  function recordEvent(event) {
    vb.events.push(event.type);
    if (vb.events.length > 5000) vb.events.shift();  // a bounded log of event types, for debugging
    if (!event.turn_id) return;
    if (!vb.turnEvents[event.turn_id]) {
      vb.turnEvents[event.turn_id] = [];
      recordedTurns.push(event.turn_id);
      if (recordedTurns.length > KEPT_TURN_EVENTS) delete vb.turnEvents[recordedTurns.shift()];
    }
    vb.turnEvents[event.turn_id].push(event.type);
  }

  const handlers = {
    conversation_opened(e) {
      const isNew = vb.conversationId !== e.conversation_id;
      setConversation(e.conversation_id);
      if (isNew) refreshConversations();
    },
    turn_started(e) {
      turnRunning = true;
      const turn = currentTurn() || newTurn();
      clearTimeout(answerWatchdog);
      turn.id = e.turn_id;
      turn.el.dataset.turnId = e.turn_id;
      if (vb.state !== "listening") setState("thinking");
    },
    speech_started(e) { turnFor(e).user.classList.add("interim"); },
    transcript(e) {
      const turn = turnFor(e);
      turn.user.textContent = e.text || "…";
      turn.user.classList.toggle("interim", !e.final);
      if (e.final) vb.lastTranscript = e.text;
      scrollDown();
    },
    response_delta(e) {
      const turn = turnFor(e);
      turn.answer += e.text;
      turn.assistant.textContent = turn.answer;
      vb.lastResponse = turn.answer;
      scrollDown();
    },
    audio(e) { pendingAudio = e; },
    degraded(e) { note(turnFor(e), `${e.stage.toUpperCase()} degraded: ${e.message}`); },
    turn_completed(e) { finishTurn(e, null); },
    // The user spoke over the answer (hands-free): the server pauses it while it judges the words.
    playback_paused() { player.pause(); vb.pauses++; },
    playback_resumed() { player.resume(); vb.resumes++; },
    turn_interrupted(e) {
      // A barge-in the server decided (or confirms): the rest of this turn's audio is dropped.
      mutedTurns.add(e.turn_id);
      player.stop();
      vb.playingAfterInterrupt.push(player.playing);
      finishTurn(e, "interrupted");
    },
    turn_failed(e) { finishTurn(e, "failed"); note(turnFor(e), e.message); },
    // The gateway moved the conversation to another orchestrator (its own died or is shutting
    // down): not an error. A turn cut short by the move is marked as lost; talking goes on.
    reconnected(e) {
      vb.reconnects = (vb.reconnects || 0) + 1;
      setConversation(e.conversation_id);
      const lost = e.lost_turn_id && turns.find((t) => t.id === e.lost_turn_id);
      if (lost) {
        mutedTurns.add(e.lost_turn_id);
        player.stop();
        lost.done = true;
        lost.user.classList.remove("interim");
        note(lost, e.message);
      } else {
        const p = document.createElement("div");
        p.className = "turn-note";
        p.dataset.testid = "reconnected";
        p.textContent = e.message;
        $("turns").append(p);
      }
      if (turnRunning) { dropPendingTurn(); endTurn(); }
    },
    error(e) {
      if (e.code !== "unauthenticated") showError(e.message); // the token dialog says it
      if (e.fatal) {
        started = false;
        handsFree.stop();
        if (e.code === "not_found") { setConversation(null); }
      }
      // An error outside a turn (e.g. text refused) ends the wait; one inside a turn is
      // followed by turn_failed.
      if (e.fatal || !turnRunning) { dropPendingTurn(); endTurn(); }
    },
  };

  Object.defineProperty(vb, "playing", { get: () => player.playing, enumerable: true });
  Object.defineProperty(vb, "turnRunning", { get: () => turnRunning, enumerable: true });

  // ---- turns on screen ----------------------------------------------------------
  let turns = [];

  function newTurn(userText) {
    $("welcome").hidden = true;
    const el = document.createElement("article");
    el.className = "turn";
    el.dataset.testid = "turn";
    const user = document.createElement("div");
    user.className = "bubble user";
    user.dataset.testid = "user-text";
    user.textContent = userText || "";
    const assistant = document.createElement("div");
    assistant.className = "bubble assistant";
    assistant.dataset.testid = "assistant-text";
    const meta = document.createElement("div");
    meta.className = "turn-meta";
    meta.dataset.testid = "turn-timings";
    el.append(user, assistant, meta);
    $("turns").append(el);
    const turn = { id: null, el, user, assistant, meta, answer: "", done: false };
    turns.push(turn);
    scrollDown();
    return turn;
  }

  // The newest turn still waiting for its id (made when the user pressed talk or sent text).
  function currentTurn() {
    const last = turns[turns.length - 1];
    return last && !last.id && !last.done ? last : null;
  }

  function turnFor(event) {
    return turns.find((t) => t.id && t.id === event.turn_id) || currentTurn() || newTurn();
  }

  function note(turn, text) {
    const p = document.createElement("div");
    p.className = "turn-note";
    p.textContent = text;
    turn.el.append(p);
  }

  const seconds = (s) => (s ? `${s.toFixed(2)} s` : null);

  function describe(turn, record, label) {
    const t = record.timings || {};
    const parts = [
      t.stt_seconds && `STT ${seconds(t.stt_seconds)}`,
      t.llm_first_token_seconds && `first token ${seconds(t.llm_first_token_seconds)}`,
      t.first_audio_seconds && `first audio ${seconds(t.first_audio_seconds)}`,
      t.total_seconds && `total ${seconds(t.total_seconds)}`,
    ].filter(Boolean);
    const p = record.providers || {};
    const who = [p.llm_model || p.llm_provider, p.tts_engine].filter(Boolean).join(" · ");
    turn.meta.textContent = "";
    const outcome = label || (record.outcome && record.outcome !== "completed" ? record.outcome.replace("_", " ") : "");
    if (outcome) {
      const tag = document.createElement("span");
      tag.className = `tag${outcome === "failed" ? " warn" : ""}`;
      tag.textContent = outcome;
      turn.meta.append(tag);
    }
    turn.meta.append(document.createTextNode([parts.join(" · "), who].filter(Boolean).join("  —  ")));
  }

  function finishTurn(e, label) {
    const turn = turnFor(e);
    const record = e.turn || {};
    if (record.user_text && !turn.user.textContent.trim()) turn.user.textContent = record.user_text;
    turn.user.classList.remove("interim");
    if (record.assistant_text && (label || !turn.answer)) {
      turn.answer = record.assistant_text;
      turn.assistant.textContent = record.assistant_text;
    }
    if (!turn.assistant.textContent) turn.assistant.textContent = label === "interrupted" ? "—" : "";
    turn.done = true;
    describe(turn, record, label);
    vb.lastTurn = record;
    if (record.user_text) vb.lastTranscript = record.user_text;
    if (record.assistant_text) vb.lastResponse = record.assistant_text;
    if (label === "interrupted") vb.interruptions++;
    else vb.turnsFinished++;
    endTurn();
    refreshConversations();
  }

  function endTurn() {
    turnRunning = false;
    turnWaiters.splice(0).forEach((resolve) => resolve());
    if (vb.state === "listening") return;
    setState(player.playing ? "speaking" : (ws ? "idle" : "offline"));
  }

  function renderStoredTurns(conversation) {
    $("turns").querySelectorAll(".turn").forEach((el) => el.remove());
    turns = [];
    $("welcome").hidden = conversation.turns.length > 0;
    for (const record of conversation.turns) {
      const turn = newTurn(record.user_text || "(no speech)");
      turn.id = record.turn_id;
      turn.answer = record.assistant_text;
      turn.assistant.textContent = record.assistant_text || "—";
      turn.done = true;
      describe(turn, record, record.interrupted ? "interrupted" : null);
    }
  }

  const scrollDown = () => { $("turns").scrollTop = $("turns").scrollHeight; };

  // ---- barge-in -------------------------------------------------------------------
  function interruptAnswer() {
    const speaking = player.playing || turnRunning;
    // What the interrupt cut, as the page saw it at that instant (a test reading it a moment
    // later could find the answer already over).
    if (speaking) vb.lastBargeIn = { playing: player.playing, turnRunning };
    player.stop();
    if (!speaking) return Promise.resolve();
    for (const turn of turns) if (turn.id && !turn.done) mutedTurns.add(turn.id);
    if (ws && ws.readyState === WebSocket.OPEN && started) {
      send({ type: "interrupt" });
      vb.interruptsSent++;
    }
    if (!turnRunning) return Promise.resolve();
    return new Promise((resolve) => { turnWaiters.push(resolve); setTimeout(resolve, 3000); });
  }

  // ---- microphone: MediaRecorder chunks streamed while the button is held ----------
  let micStream = null;
  let recorder = null;
  let holding = false;

  const recorderFormat = window.VoicebusAudio.recorderFormat;

  async function startTalking() {
    if (holding || handsFree.active) return;
    holding = true;
    turnsEndedAtPress = vb.turnsFinished;
    clearError();
    player.unlock();
    const wasAnswering = player.playing || turnRunning;
    interruptAnswer(); // stop local playback at once; the server ends the turn on its side
    try {
      if (!window.MediaRecorder || !navigator.mediaDevices) throw new Error("This browser cannot record audio here "
        + "(it needs HTTPS or localhost, and MediaRecorder).");
      if (!micStream) {
        micStream = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: true, noiseSuppression: true, channelCount: 1 } });
      }
      await ensureStarted();
    } catch (err) {
      holding = false;
      showError(microphoneError(err));
      return;
    }
    if (!holding) return; // released before the microphone was ready
    const { mimeType } = recorderFormat();
    recorder = new MediaRecorder(micStream, mimeType ? { mimeType } : undefined);
    recorder.ondataavailable = (e) => {
      if (e.data && e.data.size && ws && ws.readyState === WebSocket.OPEN) ws.send(e.data);
    };
    const stopped = recorder;
    // The turn's trace starts now, before its first audio frame (see /debug/traces).
    const turnTrace = traceparent();
    recorder.onstop = () => {
      // After the last dataavailable: the utterance is complete.
      if (ws && ws.readyState === WebSocket.OPEN) {
        send({ type: "end_of_audio", traceparent: turnTrace });
        vb.endOfAudioSent++;
      }
      if (stopped === recorder) recorder = null;
    };
    send({ type: "audio_start", traceparent: turnTrace });
    recorder.start(250);
    if (wasAnswering || !currentTurn()) newTurn("…");
    setState("listening");
  }

  function microphoneError(err) {
    const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
    return denied ? "Microphone access was denied. Allow it in the browser to talk." : err.message;
  }

  let turnsEndedAtPress = 0;  // turns finished before the talk button went down
  function stopTalking() {
    if (!holding) return;
    holding = false;
    if (recorder && recorder.state !== "inactive") {
      recorder.stop();
      // The server may have ended the utterance on its own silence detection and answered
      // while the button was still held: then there is nothing left to wait for.
      const answered = !turnRunning && vb.turnsFinished > turnsEndedAtPress;
      if (answered) {
        setState(player.playing ? "speaking" : "idle");
      } else {
        setState("thinking");
        waitForAnswer();
      }
    }
  }

  // ---- hands-free: the microphone always open, the server ends utterances (handsfree.js) --
  const handsFree = new window.VoicebusHandsFree.HandsFreeSession({
    openStream: async () => { await ensureStarted(); return recorderFormat(); },
    sendAudio: (blob) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(blob); },
    onEnd: () => {
      // The server's recording still expects the rest of the session's container stream: the
      // next audio goes to a new stream. A conversation is stored with its first turn, so one
      // without any cannot be reopened: the new stream then opens a new one.
      started = false;
      if (!turns.some((turn) => turn.done && turn.id)) setConversation(null);
      setState(vb.state);
    },
  });
  Object.defineProperty(vb, "handsFree", { get: () => handsFree.active, enumerable: true });
  Object.defineProperty(vb, "microphone", { get: () => handsFree.microphone, enumerable: true });

  async function toggleHandsFree() {
    if (handsFree.active) { handsFree.stop(); return; }
    if (holding) return;
    clearError();
    player.unlock(); // inside the click: autoplay rules
    const starting = handsFree.start();
    setState(vb.state);
    try { await starting; } catch (err) { showError(microphoneError(err)); }
  }

  // Nothing came back for an utterance (e.g. too short to hold any audio): stop waiting.
  let answerWatchdog = null;
  function waitForAnswer() {
    clearTimeout(answerWatchdog);
    answerWatchdog = setTimeout(() => {
      if (turnRunning || vb.state !== "thinking") return;
      dropPendingTurn();
      endTurn();
      showError("Nothing was heard. Hold the button while you speak.");
    }, 20000);
  }

  // A placeholder turn that never started on the server.
  function dropPendingTurn() {
    const pending = currentTurn();
    if (pending && !pending.answer) {
      pending.el.remove();
      turns.pop();
    }
  }

  async function sendText(text) {
    clearError();
    player.unlock();
    await interruptAnswer();
    try {
      await ensureStarted();
    } catch (err) {
      showError(err.message);
      return;
    }
    newTurn(text);
    send({ type: "text", text, traceparent: traceparent() });
    setState("thinking");
    waitForAnswer();
  }

  // ---- conversations -----------------------------------------------------------------
  function setConversation(id) {
    vb.conversationId = id;
    if (id) localStorage.setItem(CONVERSATION_KEY, id); else localStorage.removeItem(CONVERSATION_KEY);
    document.querySelectorAll(".conversations li").forEach((li) => li.classList.toggle("current", li.dataset.id === id));
  }

  const relative = (iso) => {
    if (!iso) return "";
    const s = (Date.now() - Date.parse(iso)) / 1000;
    if (s < 60) return "just now";
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return new Date(iso).toLocaleDateString();
  };

  async function refreshConversations() {
    let data;
    try { data = await api("/api/conversations?page_size=50"); } catch (err) {
      if (err.status !== 401) console.warn("conversations:", err.message);
      return;
    }
    const list = $("conversations");
    list.textContent = "";
    for (const c of data.conversations) {
      const li = document.createElement("li");
      li.dataset.id = c.conversation_id;
      li.dataset.testid = "conversation";
      li.classList.toggle("current", c.conversation_id === vb.conversationId);
      const open = document.createElement("button");
      open.className = "conversation-open";
      open.type = "button";
      const title = document.createElement("span");
      title.className = "conversation-title";
      title.textContent = c.title || "New conversation";
      const meta = document.createElement("span");
      meta.className = "conversation-meta";
      meta.textContent = `${c.turn_count} turn${c.turn_count === 1 ? "" : "s"} · ${relative(c.updated_at)}`;
      open.append(title, meta);
      open.onclick = () => openConversation(c.conversation_id);
      const del = document.createElement("button");
      del.className = "conversation-delete";
      del.type = "button";
      del.title = "Delete";
      del.setAttribute("aria-label", "Delete conversation");
      del.textContent = "×";
      del.onclick = () => deleteConversation(c.conversation_id);
      li.append(open, del);
      list.append(li);
    }
    $("empty-list").hidden = data.conversations.length > 0;
    const current = data.conversations.find((c) => c.conversation_id === vb.conversationId);
    if (current) $("title").textContent = current.title || "New conversation";
  }

  async function openConversation(id) {
    closeDrawer();
    await interruptAnswer();
    let conversation;
    try { conversation = await api(`/api/conversations/${encodeURIComponent(id)}`); } catch (err) {
      if (err.status === 404) { setConversation(null); refreshConversations(); }
      showError(err.message);
      return;
    }
    setConversation(id);
    $("title").textContent = conversation.title || "New conversation";
    renderStoredTurns(conversation);
    restartStream();
    scrollDown();
  }

  async function deleteConversation(id) {
    try { await api(`/api/conversations/${encodeURIComponent(id)}`, { method: "DELETE" }); } catch (err) {
      showError(err.message);
      return;
    }
    if (id === vb.conversationId) newConversation();
    refreshConversations();
  }

  async function newConversation() {
    closeDrawer();
    await interruptAnswer();
    setConversation(null);
    renderStoredTurns({ turns: [] });
    $("title").textContent = "New conversation";
    restartStream();
  }

  // The next talk/text sends a fresh `start` (with the chosen conversation, if any).
  function restartStream() {
    started = false;
    mutedTurns = new Set();
    if (handsFree.active) { handsFree.stop(); toggleHandsFree(); } // its audio goes to the new stream
  }

  // ---- token -----------------------------------------------------------------------
  function askForToken(reason) {
    const dialog = $("token-dialog");
    $("token-reason").textContent = `${reason} It stays in this browser only.`;
    $("token-input").value = token();
    if (!dialog.open) dialog.showModal();
  }

  $("token-form").addEventListener("submit", () => {
    localStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    reconnect();
  });
  $("token-clear").onclick = () => { localStorage.removeItem(TOKEN_KEY); $("token-dialog").close(); reconnect(); };
  $("token-button").onclick = () => askForToken("Paste the gateway's access token, if it has one.");

  function reconnect() {
    if (ws) { ws.onclose = null; ws.close(); ws = null; }
    connect();
    refreshConversations();
  }

  // ---- wiring ------------------------------------------------------------------------
  const talk = $("talk");
  talk.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    talk.setPointerCapture(e.pointerId);
    startTalking();
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) talk.addEventListener(type, stopTalking);
  talk.addEventListener("contextmenu", (e) => e.preventDefault());

  const typing = (target) => target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA");
  document.addEventListener("keydown", (e) => {
    if (e.code !== "Space" || typing(e.target) || $("token-dialog").open) return;
    e.preventDefault();
    if (!e.repeat) startTalking();
  });
  document.addEventListener("keyup", (e) => {
    if (e.code !== "Space" || typing(e.target)) return;
    e.preventDefault();
    stopTalking();
  });

  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("text-input").value.trim();
    if (!text) return;
    $("text-input").value = "";
    sendText(text);
  });

  $("handsfree").onclick = toggleHandsFree;
  $("new-conversation").onclick = newConversation;
  $("error-close").onclick = clearError;
  const closeDrawer = () => $("app").classList.remove("drawer-open");
  $("menu-button").onclick = () => $("app").classList.add("drawer-open");
  $("scrim").onclick = closeDrawer;

  // ---- start -------------------------------------------------------------------------
  setState("connecting");
  connect();
  refreshConversations();
  const remembered = localStorage.getItem(CONVERSATION_KEY);
  if (remembered) openConversation(remembered);
})();
