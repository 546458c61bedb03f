// Package protocodec makes Debian 12's grpc-go (1.33) marshal messages with the protobuf
// API v2 (google.golang.org/protobuf, which today's protoc-gen-go generates for).
//
// grpc-go 1.33's built-in "proto" codec calls github.com/golang/protobuf, and Debian 12
// packages that as 1.3.5 (golang-goprotobuf-dev), from before API v2: it cannot marshal the
// generated messages (a nil pointer panic in table_marshal.go). With golang/protobuf 1.4 or
// later, which is built on API v2, this codec is not needed. Import it for its side effect:
//
//	import _ "voicebus/clients/go/protocodec"
package protocodec

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"
)

// Name is the content subtype gRPC uses for protobuf ("application/grpc+proto").
const Name = "proto"

type codec struct{}

func (codec) Marshal(v interface{}) ([]byte, error) {
	message, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("protocodec: %T is not a protobuf API v2 message", v)
	}
	return proto.Marshal(message)
}

func (codec) Unmarshal(data []byte, v interface{}) error {
	message, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("protocodec: %T is not a protobuf API v2 message", v)
	}
	return proto.Unmarshal(data, message)
}

func (codec) Name() string { return Name }

// Registering under "proto" replaces grpc-go's built-in codec for every call.
func init() { encoding.RegisterCodec(codec{}) }
