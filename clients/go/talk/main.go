// Command talk talks to the Voicebus Assistant from Go: one turn over the streaming Converse
// call, with stubs generated from proto/ by Debian's protoc-gen-go and protoc-gen-go-grpc.
//
//	talk --audio question.wav [--addr host:port] [--token T] [--out answer.wav]
//	talk --text "What is the capital of France?"
//
// Build: clients/go/build.sh (GOPATH mode, Debian's Go packages, no module download).
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	voicebusv1 "voicebus/clients/go/gen/voicebus/v1"
)

const (
	program = "talk"
	usage   = "usage: talk (--audio FILE | --text TEXT) [--addr host:port] [--token T] " +
		"[--out answer.wav] [--conversation ID] [--language CODE] [--timeout SECONDS]"
)

// usageError: the command line is wrong (printed with the usage line, exit code 2).
type usageError struct{ message string }

func (e usageError) Error() string { return e.message }

type options struct {
	audio, text, addr, token, out, conversation, language string
	hasAudio, hasText                                     bool
	timeout                                               time.Duration
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func parseOptions(args []string) (*options, error) {
	flags := flag.NewFlagSet(program, flag.ContinueOnError)
	flags.SetOutput(io.Discard) // errors are reported in one line by main
	o := &options{}
	flags.StringVar(&o.audio, "audio", "", "a recording (WAV, Ogg, FLAC, MP3, WebM or M4A)")
	flags.StringVar(&o.text, "text", "", "a typed question")
	flags.StringVar(&o.addr, "addr", envOr("VOICEBUS_ORCHESTRATOR_ADDR", "127.0.0.1:50050"), "orchestrator address")
	flags.StringVar(&o.token, "token", os.Getenv("VOICEBUS_AUTH_TOKEN"), "the API token")
	flags.StringVar(&o.out, "out", "answer.wav", "where to save the spoken answer")
	flags.StringVar(&o.conversation, "conversation", "", "continue this conversation")
	flags.StringVar(&o.language, "language", "", "language hint, e.g. en or hi")
	timeoutSeconds := flags.Float64("timeout", 180, "seconds to wait for the whole turn")
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Println(usage)
			os.Exit(0)
		}
		return nil, usageError{err.Error()}
	}
	if flags.NArg() > 0 {
		return nil, usageError{"unexpected argument: " + flags.Arg(0)}
	}
	flags.Visit(func(f *flag.Flag) {
		o.hasAudio = o.hasAudio || f.Name == "audio"
		o.hasText = o.hasText || f.Name == "text"
	})
	if o.hasAudio == o.hasText {
		return nil, usageError{"give exactly one of --audio FILE or --text TEXT"}
	}
	if !(*timeoutSeconds > 0) {
		return nil, usageError{fmt.Sprintf("--timeout must be a positive number of seconds, not '%g'", *timeoutSeconds)}
	}
	o.timeout = time.Duration(*timeoutSeconds * float64(time.Second))
	return o, nil
}

// saveAnswer writes the answer's speech: PCM16 chunks as one WAV, container chunks as sent.
func saveAnswer(chunks []*voicebusv1.AudioChunk, path string) error {
	allPcm16, rate := true, 0
	for _, chunk := range chunks {
		allPcm16 = allPcm16 && isPcm16(chunk)
		if rate == 0 {
			rate = int(chunk.GetFormat().GetSampleRateHz())
		}
	}
	if !allPcm16 {
		var joined bytes.Buffer
		for _, chunk := range chunks {
			joined.Write(chunk.GetData())
		}
		return os.WriteFile(path, joined.Bytes(), 0o644)
	}
	if rate == 0 {
		return errors.New("the server sent PCM16 audio without a sample rate")
	}
	pcm := make([]pcm16Chunk, 0, len(chunks))
	for _, chunk := range chunks {
		chunkRate := int(chunk.GetFormat().GetSampleRateHz())
		if chunkRate == 0 {
			chunkRate = rate
		}
		pcm = append(pcm, pcm16Chunk{data: chunk.GetData(), rate: chunkRate})
	}
	return os.WriteFile(path, wavFromPcm16(pcm), 0o644)
}

func outcomeName(outcome voicebusv1.TurnOutcome) string {
	return strings.ToLower(strings.TrimPrefix(outcome.String(), "TURN_OUTCOME_"))
}

// report prints the rest of the turn as "label: value" lines, saves the audio, and
// returns the exit code.
func report(o *options, r *turnResult) (int, error) {
	turn := r.turn
	if r.transcript == nil && turn.GetUserText() != "" {
		fmt.Printf("you: %s\n", turn.GetUserText())
	}
	if r.answer.Len() == 0 && turn.GetAssistantText() != "" {
		fmt.Printf("assistant: %s\n", strings.Join(strings.Fields(turn.GetAssistantText()), " "))
	}
	for _, message := range r.degraded {
		fmt.Printf("degraded: %s\n", message)
	}
	outcome := "failed"
	if turn != nil {
		outcome = outcomeName(turn.GetOutcome())
	}
	if outcome != "completed" {
		detail := ""
		if r.err != "" {
			detail = " (" + r.err + ")"
		}
		fmt.Printf("outcome: %s%s\n", outcome, detail)
	}
	fmt.Printf("conversation: %s\n", r.conversationID)
	if len(r.audio) > 0 {
		if err := saveAnswer(r.audio, o.out); err != nil {
			return 1, err
		}
		fmt.Printf("audio: %s\n", o.out)
	} else if turn != nil {
		fmt.Println("audio: none (the answer has no speech)")
	}
	if (outcome == "completed" || outcome == "no_speech") && r.err == "" {
		return 0, nil
	}
	return 1, nil
}

func run(o *options) (int, error) {
	input := turnInput{text: o.text, conversationID: o.conversation, languageCode: o.language}
	if o.hasAudio {
		audio, err := readAudio(o.audio)
		if err != nil {
			return 2, err
		}
		input.audio = audio
	}
	result, err := converse(o.addr, o.token, o.timeout, input, os.Stdout)
	if err != nil {
		return 1, err
	}
	return report(o, result)
}

var capitalAfterLower = regexp.MustCompile(`([a-z])([A-Z])`)

// errorLine is the error in one line; gRPC statuses are named as gRPC spells them
// ("UNAUTHENTICATED: ...", not grpc-go's "Unauthenticated").
func errorLine(err error, addr string) string {
	line := err.Error()
	if st, ok := status.FromError(err); ok {
		name := strings.ToUpper(capitalAfterLower.ReplaceAllString(st.Code().String(), "${1}_${2}"))
		line = name + ": " + st.Message()
		if st.Code() == codes.Unavailable {
			line += fmt.Sprintf(" (is the orchestrator running at %s?)", addr)
		}
	}
	return strings.SplitN(line, "\n", 2)[0]
}

func main() {
	o, err := parseOptions(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n%s\n", program, err, usage)
		os.Exit(2)
	}
	code, err := run(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", program, errorLine(err, o.addr))
	}
	os.Exit(code)
}
