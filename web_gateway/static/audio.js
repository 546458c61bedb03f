// Audio for the Voicebus page: answer chunks played back to back with Web Audio as they
// arrive, and the microphone format MediaRecorder should use.
"use strict";

window.VoicebusAudio = (() => {
  class ChunkPlayer {
    constructor() {
      this.ctx = null;
      this.nextTime = 0;         // when the last scheduled chunk ends (AudioContext time)
      this.sources = new Set();  // scheduled or playing
      this.decoding = Promise.resolve(); // containers decode asynchronously: keep their order
      this.onChunkScheduled = () => {};
      this.onChunkPlayed = () => {};
      this.turnId = null;        // the turn whose audio was scheduled last
      this.turnStart = 0;        // when its first chunk starts (AudioContext time)
      this.turnSeconds = 0;      // its audio scheduled so far
      this.paused = false;       // the server said the user may be talking over the answer
    }

    // Seconds of `turnId`'s audio played so far (null for a turn this player is not playing).
    played(turnId) {
      if (!this.ctx || turnId !== this.turnId) return null;
      return Math.min(Math.max(0, this.ctx.currentTime - this.turnStart), this.turnSeconds);
    }

    // Must first run inside a user gesture (autoplay rules).
    unlock() {
      if (!this.ctx) this.ctx = new (window.AudioContext || window.webkitAudioContext)();
      if (this.ctx.state === "suspended" && !this.paused) this.ctx.resume();
    }

    // Hold everything where it is: with the context suspended its clock stands still, so what
    // is scheduled waits, chunks arriving meanwhile queue behind it, and played() counts
    // only what was heard.
    pause() {
      this.paused = true;
      if (this.ctx) this.ctx.suspend();
    }

    resume() {
      this.paused = false;
      if (this.ctx) this.ctx.resume();
    }

    get playing() { return this.sources.size > 0; }

    // header: the `audio` event ({encoding, sample_rate, ...}); data: its ArrayBuffer.
    play(header, data) {
      this.unlock();
      if (header.encoding === "pcm16") {
        this.schedule(this.pcm16Buffer(data, header.sample_rate || 22050), header.turn_id);
        return Promise.resolve();
      }
      const generation = this.generation;
      this.decoding = this.decoding.then(() => this.ctx.decodeAudioData(data.slice(0)))
        .then((buffer) => { if (generation === this.generation) this.schedule(buffer, header.turn_id); });
      return this.decoding;
    }

    pcm16Buffer(data, rate) {
      const samples = new Int16Array(data, 0, data.byteLength >> 1);
      const buffer = this.ctx.createBuffer(1, Math.max(1, samples.length), rate);
      const channel = buffer.getChannelData(0);
      for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
      return buffer;
    }

    schedule(buffer, turnId) {
      const source = this.ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(this.ctx.destination);
      const at = Math.max(this.ctx.currentTime + 0.02, this.nextTime);
      source.start(at);
      this.nextTime = at + buffer.duration;
      if (turnId !== this.turnId) { this.turnId = turnId; this.turnStart = at; this.turnSeconds = 0; }
      this.turnSeconds += buffer.duration;
      this.sources.add(source);
      this.onChunkScheduled();
      source.onended = () => {
        this.sources.delete(source);
        this.onChunkPlayed(this.sources.size === 0);
      };
    }

    // Barge-in: silence now, forget what was scheduled.
    stop() {
      this.generation = (this.generation || 0) + 1;
      for (const source of this.sources) {
        source.onended = null;
        try { source.stop(); } catch (_) { /* not started yet */ }
      }
      this.sources.clear();
      this.nextTime = 0;
      if (this.paused) this.resume(); // the next turn's audio must play
    }
  }

  // The first container this browser records that the server decodes, and its `format`.
  function recorderFormat() {
    const options = [["audio/webm;codecs=opus", "webm"], ["audio/webm", "webm"], ["audio/ogg;codecs=opus", "ogg"],
      ["audio/mp4", "auto"]];
    for (const [mimeType, format] of options) {
      if (window.MediaRecorder && MediaRecorder.isTypeSupported(mimeType)) return { mimeType, format };
    }
    return { mimeType: "", format: "auto" };
  }

  return { ChunkPlayer, recorderFormat };
})();
