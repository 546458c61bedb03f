// One turn over the streaming Converse call: config, then the text or the audio, then the
// events as they come (the answer is printed while the LLM writes it).
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { AudioEncoding, type AudioChunk } from "./gen/voicebus/v1/audio_pb.js";
import {
  Assistant, ConverseRequestSchema, type ConverseRequest, type ConverseResponse, type Turn,
} from "./gen/voicebus/v1/assistant_pb.js";

const AUDIO_CHUNK_BYTES = 32 * 1024;
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

export interface TurnInput {
  text?: string;
  audio?: Buffer;
  conversationId: string;
  languageCode: string;
}

export interface TurnResult {
  conversationId: string;
  transcript?: string;
  answer: string;
  audio: AudioChunk[];
  degraded: string[];
  turn?: Turn;
  error?: string;
}

/** Resolves once; `done` tells whether it has. */
class Signal {
  done = false;
  readonly wait: Promise<void>;
  private resolve!: () => void;
  constructor() {
    this.wait = new Promise((resolve) => { this.resolve = resolve; });
  }
  set(): void {
    this.done = true;
    this.resolve();
  }
}

async function* requests(input: TurnInput, opened: Signal, turnOver: Signal): AsyncGenerator<ConverseRequest> {
  yield create(ConverseRequestSchema, {
    request: {
      case: "config",
      value: {
        conversationId: input.conversationId,
        options: {
          languageCode: input.languageCode,
          synthesizeAudio: true,
          outputFormat: { encoding: AudioEncoding.PCM16 },
        },
      },
    },
  });
  // Nothing more until the server accepted the config: a refused config (unknown
  // conversation) ends the stream, and a write racing that end would hide its status.
  await opened.wait;
  if (turnOver.done) return;
  if (input.audio === undefined) {
    yield create(ConverseRequestSchema, { request: { case: "text", value: input.text ?? "" } });
  } else {
    for (let start = 0; start < input.audio.length; start += AUDIO_CHUNK_BYTES) {
      const piece = input.audio.subarray(start, start + AUDIO_CHUNK_BYTES);
      yield create(ConverseRequestSchema, { request: { case: "audio", value: piece } });
    }
    yield create(ConverseRequestSchema, { request: { case: "endOfAudio", value: {} } });
  }
  // Half-closing ends the conversation stream, so it waits until the turn is over.
  await turnOver.wait;
}

/** Records one event in `result` and prints what the user should see as it happens. */
function handle(event: ConverseResponse, result: TurnResult, write: (text: string) => void): void {
  result.conversationId = event.conversationId || result.conversationId;
  const { case: kind, value } = event.event;
  if (kind === "transcript" && value.isFinal) {
    result.transcript = value.text;
    write(`you: ${value.text || "(nothing heard)"}\n`);
  } else if (kind === "responseDelta") {
    if (!result.answer) write("assistant: ");
    result.answer += value.text;
    write(value.text.replace(/\n/g, " ")); // one line per label
  } else if (kind === "audio" && value.chunk) {
    result.audio.push(value.chunk);
  } else if (kind === "degraded") {
    result.degraded.push(value.message);
  } else if (kind === "turnCompleted" || kind === "turnInterrupted") {
    result.turn = value.turn;
  } else if (kind === "turnFailed") {
    result.turn = value.turn;
    result.error = value.message || "the turn failed";
  } else if (kind === "error") {
    result.error = value.message || "the server reported an error";
  }
}

export async function converse(
  addr: string, token: string, timeoutSeconds: number, input: TurnInput, write: (text: string) => void,
): Promise<TurnResult> {
  const transport = createGrpcTransport({
    baseUrl: `http://${addr}`, readMaxBytes: MAX_MESSAGE_BYTES, writeMaxBytes: MAX_MESSAGE_BYTES,
  });
  const client = createClient(Assistant, transport);
  const result: TurnResult = { conversationId: input.conversationId, answer: "", audio: [], degraded: [] };
  const opened = new Signal();
  const turnOver = new Signal();
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  try {
    const events = client.converse(requests(input, opened, turnOver), { headers, timeoutMs: timeoutSeconds * 1000 });
    for await (const event of events) {
      handle(event, result, write);
      if (event.event.case === "conversationOpened") opened.set();
      if (result.turn !== undefined || result.error !== undefined) turnOver.set();
    }
  } finally {
    turnOver.set();
    opened.set();
  }
  if (result.answer) write("\n");
  return result;
}

export function isPcm16(chunk: AudioChunk): boolean {
  const encoding = chunk.format?.encoding ?? AudioEncoding.UNSPECIFIED;
  return encoding === AudioEncoding.PCM16 || encoding === AudioEncoding.UNSPECIFIED;
}
