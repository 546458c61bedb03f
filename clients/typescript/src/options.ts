// The command line of talk.ts, the same as clients/node/talk.js's.
import { parseArgs } from "node:util";

export const USAGE = "usage: talk.js (--audio FILE | --text TEXT) [--addr host:port] [--token T] "
  + "[--out answer.wav] [--conversation ID] [--language CODE] [--timeout SECONDS]";

/** The command line is wrong: printed with the usage line, exit code 2. */
export class UsageError extends Error {}

export interface TalkOptions {
  audio?: string;
  text?: string;
  addr: string;
  token: string;
  out: string;
  conversation: string;
  language: string;
  timeoutSeconds: number;
  help: boolean;
}

export function parseOptions(argv: string[], env: NodeJS.ProcessEnv): TalkOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        audio: { type: "string" },
        text: { type: "string" },
        addr: { type: "string", default: env.VOICEBUS_ORCHESTRATOR_ADDR || "127.0.0.1:50050" },
        token: { type: "string", default: env.VOICEBUS_AUTH_TOKEN || "" },
        out: { type: "string", default: "answer.wav" },
        conversation: { type: "string", default: "" },
        language: { type: "string", default: "" },
        timeout: { type: "string", default: "180" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (!values.help && (values.audio === undefined) === (values.text === undefined)) {
    throw new UsageError("give exactly one of --audio FILE or --text TEXT");
  }
  const timeoutSeconds = Number(values.timeout);
  if (!(timeoutSeconds > 0)) {
    throw new UsageError(`--timeout must be a positive number of seconds, not '${values.timeout}'`);
  }
  return {
    audio: values.audio, text: values.text, addr: values.addr, token: values.token, out: values.out,
    conversation: values.conversation, language: values.language, timeoutSeconds, help: values.help,
  };
}
