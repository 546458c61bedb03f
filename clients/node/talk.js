#!/usr/bin/env node
// Talk to the Voicebus Assistant from Node.js: one turn over gRPC (ProcessTurn).
//
//   node clients/node/talk.js --audio question.wav [--addr host:port] [--token T] [--out answer.wav]
//   node clients/node/talk.js --text "What is the capital of France?"
//
// The protos are loaded at run time, so this client cannot drift from the contract the
// services are built from: from VOICEBUS_PROTO_DIR when it is set (a copy of this folder
// outside the repository), else from proto/ beside this file (a bundled copy), else from the
// repository's ../../proto.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const ASSISTANT_PROTO = "voicebus/v1/assistant.proto";
const USAGE = "usage: talk.js (--audio FILE | --text TEXT) [--addr host:port] [--token T] "
  + "[--out answer.wav] [--conversation ID] [--language CODE] [--timeout SECONDS]";

class UsageError extends Error {} // the command line is wrong
class InputError extends Error {} // the input file is missing or is not audio
class SetupError extends Error {} // the protos are not where they are looked for
let target = "VOICEBUS_ORCHESTRATOR_ADDR";

function parseOptions(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        audio: { type: "string" },
        text: { type: "string" },
        addr: { type: "string", default: process.env.VOICEBUS_ORCHESTRATOR_ADDR || "127.0.0.1:50050" },
        token: { type: "string", default: process.env.VOICEBUS_AUTH_TOKEN || "" },
        out: { type: "string", default: "answer.wav" },
        conversation: { type: "string", default: "" },
        language: { type: "string", default: "" },
        timeout: { type: "string", default: "180" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (err) {
    throw new UsageError(err.message);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if ((values.audio === undefined) === (values.text === undefined)) {
    throw new UsageError("give exactly one of --audio FILE or --text TEXT");
  }
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) throw new UsageError(`--timeout must be a positive number of seconds, not '${values.timeout}'`);
  return { ...values, timeout };
}

// The containers the STT service decodes, by their first bytes; anything else is
// refused here with a clear message instead of a round trip.
function audioKind(buf) {
  const ascii = (start, end) => buf.subarray(start, end).toString("latin1");
  if (buf.length >= 12 && ascii(0, 4) === "RIFF" && ascii(8, 12) === "WAVE") return "WAV";
  if (ascii(0, 4) === "OggS") return "Ogg";
  if (ascii(0, 4) === "fLaC") return "FLAC";
  if (buf.length >= 4 && buf.readUInt32BE(0) === 0x1a45dfa3) return "WebM/Matroska";
  if (ascii(0, 3) === "ID3" || (buf.length >= 2 && buf[0] === 0xff && (buf[1] & 0xe0) === 0xe0)) return "MP3";
  if (buf.length >= 8 && ascii(4, 8) === "ftyp") return "MP4/M4A";
  return null;
}

function readAudio(file) {
  let data;
  try {
    data = fs.readFileSync(file);
  } catch (err) {
    if (err.code === "ENOENT") throw new InputError(`no such file: ${file}`);
    if (err.code === "EISDIR") throw new InputError(`${file} is a directory, not an audio file`);
    throw new InputError(`cannot read ${file}: ${err.message}`);
  }
  if (data.length === 0) throw new InputError(`${file} is empty`);
  if (!audioKind(data)) {
    throw new InputError(`${file} is not an audio file (expected WAV, Ogg, FLAC, MP3, WebM or M4A)`);
  }
  return data;
}

// PCM16 mono samples wrapped in a WAV header, so that the saved answer plays anywhere.
function wavFromPcm16(pcm, rate, channels) {
  const header = Buffer.alloc(44);
  header.write("RIFF", 0, "latin1");
  header.writeUInt32LE(36 + pcm.length, 4);
  header.write("WAVEfmt ", 8, "latin1");
  header.writeUInt32LE(16, 16);
  header.writeUInt16LE(1, 20);
  header.writeUInt16LE(channels, 22);
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * channels * 2, 28);
  header.writeUInt16LE(channels * 2, 32);
  header.writeUInt16LE(16, 34);
  header.write("data", 36, "latin1");
  header.writeUInt32LE(pcm.length, 40);
  return Buffer.concat([header, pcm]);
}

function protoRoot() {
  const candidates = process.env.VOICEBUS_PROTO_DIR
    ? [process.env.VOICEBUS_PROTO_DIR]
    : [path.join(__dirname, "proto"), path.join(__dirname, "..", "..", "proto")];
  const found = candidates.find((dir) => fs.existsSync(path.join(dir, ASSISTANT_PROTO)));
  if (found) return found;
  if (process.env.VOICEBUS_PROTO_DIR) {
    throw new SetupError(`VOICEBUS_PROTO_DIR=${process.env.VOICEBUS_PROTO_DIR} has no ${ASSISTANT_PROTO}`);
  }
  throw new SetupError(`cannot find ${ASSISTANT_PROTO} in ${candidates.join(" or ")}: `
    + "set VOICEBUS_PROTO_DIR to the proto/ folder of the Voicebus repository");
}

function assistantClient(addr) {
  const definition = protoLoader.loadSync(ASSISTANT_PROTO, {
    includeDirs: [protoRoot()], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
  });
  const { Assistant } = grpc.loadPackageDefinition(definition).voicebus.v1;
  const size = 64 * 1024 * 1024;
  return new Assistant(addr, grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": size, "grpc.max_send_message_length": size,
  });
}

function processTurn(client, request, token, timeoutSeconds) {
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  const deadline = new Date(Date.now() + timeoutSeconds * 1000);
  return new Promise((resolve, reject) => {
    client.ProcessTurn(request, metadata, { deadline }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

function saveAnswer(reply, out) {
  const audio = reply.audio || Buffer.alloc(0);
  if (audio.length === 0) return null;
  const format = reply.audio_format || {};
  const encoding = format.encoding || "AUDIO_ENCODING_UNSPECIFIED";
  const raw = encoding === "AUDIO_ENCODING_PCM16" || encoding === "AUDIO_ENCODING_UNSPECIFIED";
  if (raw && !format.sample_rate_hz) throw new Error("the server sent PCM16 audio without a sample rate");
  fs.writeFileSync(out, raw ? wavFromPcm16(audio, format.sample_rate_hz, format.channels || 1) : audio);
  return encoding.replace("AUDIO_ENCODING_", "");
}

async function main() {
  const options = parseOptions(process.argv.slice(2));
  const request = {
    conversation_id: options.conversation,
    options: {
      language_code: options.language,
      synthesize_audio: true,
      output_format: { encoding: "AUDIO_ENCODING_WAV" },
    },
  };
  if (options.audio !== undefined) request.audio = readAudio(options.audio);
  else request.text = options.text;

  target = options.addr;
  const client = assistantClient(options.addr);
  let reply;
  try {
    reply = await processTurn(client, request, options.token, options.timeout);
  } finally {
    client.close();
  }
  const turn = reply.turn || {};
  console.log(`you: ${turn.user_text || "(nothing heard)"}`);
  // One line per label: a multi-line answer is folded (the output is "label: value" lines).
  console.log(`assistant: ${(turn.assistant_text || "").replace(/\s+/g, " ").trim()}`);
  if (turn.outcome && turn.outcome !== "TURN_OUTCOME_COMPLETED") {
    console.log(`outcome: ${turn.outcome.replace("TURN_OUTCOME_", "").toLowerCase()}${turn.error_message ? ` (${turn.error_message})` : ""}`);
  }
  for (const degraded of reply.degraded || []) console.log(`degraded: ${degraded.message}`);
  console.log(`conversation: ${turn.conversation_id}`);
  const saved = saveAnswer(reply, options.out);
  console.log(saved ? `audio: ${options.out} (${saved})` : "audio: none (the answer has no speech)");
  return turn.outcome === "TURN_OUTCOME_FAILED" ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    // One line, no stack trace: what went wrong, in words (usage errors add the usage line).
    let message = err.message;
    if (err.code !== undefined && grpc.status[err.code] !== undefined) {
      const details = (err.details || err.message).replace(/\s*Resolution note:.*$/s, "");
      message = `${grpc.status[err.code]}: ${details}`;
      if (err.code === grpc.status.UNAVAILABLE) message += ` (is the orchestrator running at ${target}?)`;
    }
    process.stderr.write(`talk.js: ${message.split("\n")[0]}\n`);
    if (err instanceof UsageError) process.stderr.write(`${USAGE}\n`);
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
