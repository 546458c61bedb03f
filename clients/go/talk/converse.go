package main

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	voicebusv1 "voicebus/clients/go/gen/voicebus/v1"
	_ "voicebus/clients/go/protocodec" // Debian's grpc-go 1.33 cannot marshal API v2 messages itself
)

const (
	audioChunkBytes = 32 * 1024
	maxMessageBytes = 64 * 1024 * 1024
)

type turnInput struct {
	text           string
	audio          []byte // nil for a typed turn
	conversationID string
	languageCode   string
}

type turnResult struct {
	conversationID string
	transcript     *string
	answer         strings.Builder
	audio          []*voicebusv1.AudioChunk
	degraded       []string
	turn           *voicebusv1.Turn
	err            string
}

// over: the turn has ended (completed, interrupted or failed) or the server reported an error.
func (r *turnResult) over() bool { return r.turn != nil || r.err != "" }

// handle records one event and prints what the user should see as it happens.
func (r *turnResult) handle(event *voicebusv1.ConverseResponse, out io.Writer) {
	if event.GetConversationId() != "" {
		r.conversationID = event.GetConversationId()
	}
	switch e := event.GetEvent().(type) {
	case *voicebusv1.ConverseResponse_Transcript:
		if e.Transcript.GetIsFinal() {
			text := e.Transcript.GetText()
			r.transcript = &text
			if text == "" {
				text = "(nothing heard)"
			}
			io.WriteString(out, "you: "+text+"\n")
		}
	case *voicebusv1.ConverseResponse_ResponseDelta:
		if r.answer.Len() == 0 {
			io.WriteString(out, "assistant: ")
		}
		r.answer.WriteString(e.ResponseDelta.GetText())
		io.WriteString(out, strings.ReplaceAll(e.ResponseDelta.GetText(), "\n", " ")) // one line per label
	case *voicebusv1.ConverseResponse_Audio:
		if e.Audio.GetChunk() != nil {
			r.audio = append(r.audio, e.Audio.GetChunk())
		}
	case *voicebusv1.ConverseResponse_Degraded:
		r.degraded = append(r.degraded, e.Degraded.GetMessage())
	case *voicebusv1.ConverseResponse_TurnCompleted:
		r.turn = e.TurnCompleted.GetTurn()
	case *voicebusv1.ConverseResponse_TurnInterrupted:
		r.turn = e.TurnInterrupted.GetTurn()
	case *voicebusv1.ConverseResponse_TurnFailed:
		r.turn = e.TurnFailed.GetTurn()
		r.err = orDefault(e.TurnFailed.GetMessage(), "the turn failed")
	case *voicebusv1.ConverseResponse_Error:
		r.err = orDefault(e.Error.GetMessage(), "the server reported an error")
	}
}

func orDefault(value, fallback string) string {
	if value == "" {
		return fallback
	}
	return value
}

// sendTurn sends the text, or the audio in chunks and then end_of_audio.
func sendTurn(stream voicebusv1.Assistant_ConverseClient, input turnInput) error {
	if input.audio == nil {
		return stream.Send(&voicebusv1.ConverseRequest{Request: &voicebusv1.ConverseRequest_Text{Text: input.text}})
	}
	for start := 0; start < len(input.audio); start += audioChunkBytes {
		end := start + audioChunkBytes
		if end > len(input.audio) {
			end = len(input.audio)
		}
		piece := &voicebusv1.ConverseRequest{Request: &voicebusv1.ConverseRequest_Audio{Audio: input.audio[start:end]}}
		if err := stream.Send(piece); err != nil {
			return err
		}
	}
	return stream.Send(&voicebusv1.ConverseRequest{Request: &voicebusv1.ConverseRequest_EndOfAudio{EndOfAudio: &voicebusv1.EndOfAudio{}}})
}

// converse runs one turn over the streaming Converse call: the config, then (once the server
// opened the conversation) the turn, then the events until the turn is over.
func converse(addr, token string, timeout time.Duration, input turnInput, out io.Writer) (*turnResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	conn, err := grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stream, err := voicebusv1.NewAssistantClient(conn).Converse(ctx)
	if err != nil {
		return nil, err
	}
	config := &voicebusv1.ConverseRequest{Request: &voicebusv1.ConverseRequest_Config{Config: &voicebusv1.ConverseConfig{
		ConversationId: input.conversationID,
		Options: &voicebusv1.TurnOptions{
			LanguageCode:    input.languageCode,
			SynthesizeAudio: true,
			OutputFormat:    &voicebusv1.AudioFormat{Encoding: voicebusv1.AudioEncoding_AUDIO_ENCODING_PCM16},
		},
	}}}
	// A Send that fails with io.EOF means the server ended the stream: Recv returns why.
	if err := stream.Send(config); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	result := &turnResult{conversationID: input.conversationID}
	for {
		event, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		result.handle(event, out)
		// Nothing is sent before the server accepted the config: a refused config (unknown
		// conversation) ends the stream, and a write racing that end would hide its status.
		if _, opened := event.GetEvent().(*voicebusv1.ConverseResponse_ConversationOpened); opened {
			if err := sendTurn(stream, input); err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
		}
		if result.over() {
			// Half-closing ends the conversation stream, so it waits until the turn is over.
			_ = stream.CloseSend()
			break
		}
	}
	if result.answer.Len() > 0 {
		io.WriteString(out, "\n")
	}
	return result, nil
}

func isPcm16(chunk *voicebusv1.AudioChunk) bool {
	encoding := chunk.GetFormat().GetEncoding()
	return encoding == voicebusv1.AudioEncoding_AUDIO_ENCODING_PCM16 ||
		encoding == voicebusv1.AudioEncoding_AUDIO_ENCODING_UNSPECIFIED
}
