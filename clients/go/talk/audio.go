package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
)

// inputError: the input file is missing or is not audio (exit code 2).
type inputError struct{ message string }

func (e inputError) Error() string { return e.message }

// audioKind names the container the STT service decodes, by its first bytes; anything else
// is refused here with a clear message instead of a round trip.
func audioKind(data []byte) string {
	has := func(start int, magic string) bool {
		return len(data) >= start+len(magic) && string(data[start:start+len(magic)]) == magic
	}
	switch {
	case has(0, "RIFF") && has(8, "WAVE"):
		return "WAV"
	case has(0, "OggS"):
		return "Ogg"
	case has(0, "fLaC"):
		return "FLAC"
	case len(data) >= 4 && binary.BigEndian.Uint32(data) == 0x1a45dfa3:
		return "WebM/Matroska"
	case has(0, "ID3") || (len(data) >= 2 && data[0] == 0xff && data[1]&0xe0 == 0xe0):
		return "MP3"
	case has(4, "ftyp"):
		return "MP4/M4A"
	}
	return ""
}

func readAudio(path string) ([]byte, error) {
	info, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, inputError{"no such file: " + path}
	}
	if err == nil && info.IsDir() {
		return nil, inputError{path + " is a directory, not an audio file"}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, inputError{fmt.Sprintf("cannot read %s: %v", path, err)}
	}
	if len(data) == 0 {
		return nil, inputError{path + " is empty"}
	}
	if audioKind(data) == "" {
		return nil, inputError{path + " is not an audio file (expected WAV, Ogg, FLAC, MP3, WebM or M4A)"}
	}
	return data, nil
}

// pcm16Chunk is a piece of the answer's speech: 16-bit little-endian mono samples at rate Hz.
type pcm16Chunk struct {
	data []byte
	rate int
}

// resampled brings a chunk to rate by linear interpolation: sentences may come from
// different voices, and the saved answer is one playable WAV.
func resampled(chunk pcm16Chunk, rate int) []byte {
	count := len(chunk.data) / 2
	if chunk.rate == rate || count == 0 {
		return chunk.data[:count*2]
	}
	sample := func(i int) float64 { return float64(int16(binary.LittleEndian.Uint16(chunk.data[i*2:]))) }
	outCount := count * rate / chunk.rate
	out := make([]byte, outCount*2)
	for i := 0; i < outCount; i++ {
		position := float64(i*(count-1)) / math.Max(float64(outCount-1), 1)
		left := int(position)
		right := left + 1
		if right > count-1 {
			right = count - 1
		}
		value := sample(left) + (sample(right)-sample(left))*(position-float64(left))
		binary.LittleEndian.PutUint16(out[i*2:], uint16(int16(math.Round(value))))
	}
	return out
}

// wavFromPcm16 joins the chunks into one mono 16-bit WAV at the first chunk's rate.
func wavFromPcm16(chunks []pcm16Chunk) []byte {
	rate := chunks[0].rate
	var pcm bytes.Buffer
	for _, chunk := range chunks {
		pcm.Write(resampled(chunk, rate))
	}
	var wav bytes.Buffer
	le := func(value interface{}) { _ = binary.Write(&wav, binary.LittleEndian, value) }
	wav.WriteString("RIFF")
	le(uint32(36 + pcm.Len()))
	wav.WriteString("WAVEfmt ")
	le(uint32(16))       // fmt chunk size
	le(uint16(1))        // PCM
	le(uint16(1))        // mono
	le(uint32(rate))     // samples per second
	le(uint32(rate * 2)) // bytes per second
	le(uint16(2))        // bytes per frame
	le(uint16(16))       // bits per sample
	wav.WriteString("data")
	le(uint32(pcm.Len()))
	wav.Write(pcm.Bytes())
	return wav.Bytes()
}
