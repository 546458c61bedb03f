#!/usr/bin/env node
// Talk to the Voicebus Assistant from TypeScript: one turn over the streaming Converse call,
// with stubs generated from proto/ by buf (protoc-gen-es) and Connect's gRPC transport.
//
//   node dist/talk.js --audio question.wav [--addr host:port] [--token T] [--out answer.wav]
//   node dist/talk.js --text "What is the capital of France?"
import { writeFileSync } from "node:fs";

import { Code, ConnectError } from "@connectrpc/connect";

import { InputError, readAudio, wavFromPcm16 } from "./audio.js";
import { converse, isPcm16, type TurnResult } from "./converse.js";
import { TurnOutcome } from "./gen/voicebus/v1/assistant_pb.js";
import { parseOptions, USAGE, UsageError, type TalkOptions } from "./options.js";

const PROGRAM = "talk.ts";
let target = "VOICEBUS_ORCHESTRATOR_ADDR"; // the address called, for the UNAVAILABLE hint

const write = (text: string): void => { process.stdout.write(text); };

/** Connect's code names ("InvalidArgument") as gRPC spells them ("INVALID_ARGUMENT"). */
function grpcStatusName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function outcomeName(outcome: TurnOutcome): string {
  return TurnOutcome[outcome].toLowerCase();
}

function saveAnswer(result: TurnResult, out: string): string {
  const chunks = result.audio.filter((chunk) => chunk.data.length > 0);
  if (!chunks.every(isPcm16)) {
    // Container chunks (not asked for, but allowed by the contract): saved as sent.
    writeFileSync(out, Buffer.concat(chunks.map((chunk) => chunk.data)));
    return out;
  }
  const rate = chunks.find((chunk) => chunk.format?.sampleRateHz)?.format?.sampleRateHz;
  if (!rate) throw new Error("the server sent PCM16 audio without a sample rate");
  writeFileSync(out, wavFromPcm16(chunks.map((chunk) => ({ data: chunk.data, rate: chunk.format?.sampleRateHz || rate }))));
  return out;
}

function report(options: TalkOptions, result: TurnResult): number {
  const turn = result.turn;
  if (result.transcript === undefined && turn?.userText) write(`you: ${turn.userText}\n`);
  if (!result.answer && turn?.assistantText) write(`assistant: ${turn.assistantText.replace(/\s+/g, " ").trim()}\n`);
  for (const message of result.degraded) write(`degraded: ${message}\n`);
  const outcome = turn ? outcomeName(turn.outcome) : "failed";
  if (outcome !== "completed") write(`outcome: ${outcome}${result.error ? ` (${result.error})` : ""}\n`);
  write(`conversation: ${result.conversationId}\n`);
  if (result.audio.length > 0) write(`audio: ${saveAnswer(result, options.out)}\n`);
  else if (turn) write("audio: none (the answer has no speech)\n");
  return (outcome === "completed" || outcome === "no_speech") && !result.error ? 0 : 1;
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2), process.env);
  if (options.help) {
    write(`${USAGE}\n`);
    return 0;
  }
  target = options.addr;
  const audio = options.audio !== undefined ? readAudio(options.audio) : undefined;
  const result = await converse(options.addr, options.token, options.timeoutSeconds, {
    text: options.text, audio, conversationId: options.conversation, languageCode: options.language,
  }, write);
  return report(options, result);
}

function errorLine(err: unknown): string {
  if (err instanceof ConnectError) {
    let line = `${grpcStatusName(err.code)}: ${err.rawMessage}`;
    if (err.code === Code.Unavailable) line += ` (is the orchestrator running at ${target}?)`;
    return line;
  }
  return err instanceof Error ? err.message : String(err);
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    // One line, no stack trace: what went wrong, in words (usage errors add the usage line).
    process.stderr.write(`${PROGRAM}: ${errorLine(err).split("\n")[0]}\n`);
    if (err instanceof UsageError) process.stderr.write(`${USAGE}\n`);
    process.exit(err instanceof UsageError || err instanceof InputError ? 2 : 1);
  },
);
