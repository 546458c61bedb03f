// Hands-free for the Voicebus page: the microphone stays open and streams to /ws with no
// `end_of_audio`; the server's VAD ends each utterance and decides barge-ins (README
// "Hands-free: what a client does"). The page only reacts to the server's events.
"use strict";

window.VoicebusHandsFree = (() => {
  // Browser voice processing on: the answer playing from the speakers must not reach the
  // recognizer as the user's speech (it would interrupt itself), nor must room noise.
  const MICROPHONE = { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true,
    channelCount: 1 } };
  const TIMESLICE_MS = 250; // how often MediaRecorder hands over audio: the latency it adds

  class HandsFreeSession {
    // openStream(): resolves once the socket carries a started stream, with the `start`'s
    // recorder format; sendAudio(blob): one binary frame; onEnd(): the session stopped.
    constructor({ openStream, sendAudio, onEnd }) {
      this.openStream = openStream;
      this.sendAudio = sendAudio;
      this.onEnd = onEnd;
      this.stream = null;
      this.recorder = null;
      this.wanted = false; // on, or being turned on (getUserMedia and the socket take a while)
    }

    get active() { return this.wanted; }

    // The state of the microphone: "live" while it records, "ended" once stopped, null before.
    get microphone() {
      const track = this.stream && this.stream.getAudioTracks()[0];
      return track ? track.readyState : null;
    }

    async start() {
      if (this.wanted) return;
      this.wanted = true;
      try {
        if (!window.MediaRecorder || !navigator.mediaDevices) throw new Error("This browser cannot record audio here "
          + "(it needs HTTPS or localhost, and MediaRecorder).");
        this.stream = await navigator.mediaDevices.getUserMedia(MICROPHONE);
        const { mimeType } = this.wanted ? await this.openStream() : {};
        if (!this.wanted) { this.releaseMicrophone(); return; } // turned off meanwhile
        // One recorder for the whole session: the server decodes one container stream, whose
        // header comes only in the first chunk, so a session must never restart its recorder.
        const recorder = new MediaRecorder(this.stream, mimeType ? { mimeType } : undefined);
        recorder.ondataavailable = (e) => {
          // The tail MediaRecorder delivers after stop() is dropped: it could reach the next
          // stream (after a new `start`) as a container fragment without its header.
          if (this.recorder === recorder && e.data && e.data.size) this.sendAudio(e.data);
        };
        this.recorder = recorder;
        recorder.start(TIMESLICE_MS);
      } catch (err) {
        this.stop();
        throw err;
      }
    }

    stop() {
      const wasOn = this.wanted;
      this.wanted = false;
      if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
      this.recorder = null;
      this.releaseMicrophone();
      if (wasOn) this.onEnd();
    }

    releaseMicrophone() {
      if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    }
  }

  return { HandsFreeSession };
})();
