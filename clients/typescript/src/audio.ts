// Audio files in and out: the input is checked before any call, the answer is saved as a WAV.
import { readFileSync } from "node:fs";

/** The input file is missing or is not audio. */
export class InputError extends Error {}

// The containers the STT service decodes, by their first bytes; anything else is refused
// here with a clear message instead of a round trip.
export function audioKind(data: Buffer): string | null {
  const ascii = (start: number, end: number) => data.subarray(start, end).toString("latin1");
  if (data.length >= 12 && ascii(0, 4) === "RIFF" && ascii(8, 12) === "WAVE") return "WAV";
  if (ascii(0, 4) === "OggS") return "Ogg";
  if (ascii(0, 4) === "fLaC") return "FLAC";
  if (data.length >= 4 && data.readUInt32BE(0) === 0x1a45dfa3) return "WebM/Matroska";
  if (ascii(0, 3) === "ID3" || (data.length >= 2 && data[0] === 0xff && (data[1] & 0xe0) === 0xe0)) return "MP3";
  if (data.length >= 8 && ascii(4, 8) === "ftyp") return "MP4/M4A";
  return null;
}

export function readAudio(file: string): Buffer {
  let data: Buffer;
  try {
    data = readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new InputError(`no such file: ${file}`);
    if (code === "EISDIR") throw new InputError(`${file} is a directory, not an audio file`);
    throw new InputError(`cannot read ${file}: ${(err as Error).message}`);
  }
  if (data.length === 0) throw new InputError(`${file} is empty`);
  if (!audioKind(data)) {
    throw new InputError(`${file} is not an audio file (expected WAV, Ogg, FLAC, MP3, WebM or M4A)`);
  }
  return data;
}

/** A piece of the answer's speech: 16-bit little-endian mono samples at `rate` Hz. */
export interface Pcm16Chunk {
  data: Uint8Array;
  rate: number;
}

// Sentences may come from different voices (rates): each is brought to the first one's rate
// by linear interpolation, so that the saved answer is one playable WAV.
function resampled(chunk: Pcm16Chunk, rate: number): Buffer {
  const input = Buffer.from(chunk.data.buffer, chunk.data.byteOffset, chunk.data.byteLength & ~1);
  if (chunk.rate === rate) return input;
  const count = input.length / 2;
  const outCount = Math.floor((count * rate) / chunk.rate);
  const output = Buffer.alloc(outCount * 2);
  for (let i = 0; i < outCount; i++) {
    const position = (i * (count - 1)) / Math.max(outCount - 1, 1);
    const left = Math.floor(position);
    const right = Math.min(left + 1, count - 1);
    const a = input.readInt16LE(left * 2);
    const b = input.readInt16LE(right * 2);
    output.writeInt16LE(Math.round(a + (b - a) * (position - left)), i * 2);
  }
  return output;
}

export function wavFromPcm16(chunks: Pcm16Chunk[]): Buffer {
  const rate = chunks[0].rate;
  const pcm = Buffer.concat(chunks.map((chunk) => resampled(chunk, rate)));
  const header = Buffer.alloc(44);
  header.write("RIFF", 0, "latin1");
  header.writeUInt32LE(36 + pcm.length, 4);
  header.write("WAVEfmt ", 8, "latin1");
  header.writeUInt32LE(16, 16); // fmt chunk size
  header.writeUInt16LE(1, 20); // PCM
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(rate, 24);
  header.writeUInt32LE(rate * 2, 28); // bytes per second
  header.writeUInt16LE(2, 32); // bytes per frame
  header.writeUInt16LE(16, 34); // bits per sample
  header.write("data", 36, "latin1");
  header.writeUInt32LE(pcm.length, 40);
  return Buffer.concat([header, pcm]);
}
