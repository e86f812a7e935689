// Package vscard speaks the card-owner ("client") side of VSCard, the
// protocol of QEMU's ccid-card-passthru device, so that a test process can
// serve the card behind an emulated usb-ccid reader.
//
// Place in the data flow (tests only):
//
//	guest driver ──USB CCID──► QEMU usb-ccid ──VSCard──► Client ──► Card (card/sim)
//
// In VSCard's words QEMU is the host (the user of the card) and this package
// is the client (the owner of the card), whoever listens on the socket.
//
// Wire format: every message is a 12-byte header, type, reader id and
// payload length, each a big-endian uint32, followed by the payload.
//
//	client                               QEMU (host)
//	Init{"VSCD", version 2, caps [0]} ─►
//	                                  ◄─ Init (QEMU may also send one unprompted)
//	ReaderAdd(reader 0xFFFFFFFF, name) ─►
//	                                  ◄─ Error(code 0, reader 0)   the reader id to use
//	ATR(reader 0, ≤40 bytes)          ─►
//	                                  ◄─ Error(code 0)             card present
//	                                  ◄─ APDU(command)             one per XfrBlock
//	APDU(response incl. SW)           ─►
//	CardRemove                        ─►
//	                                  ◄─ Error(code 0)             card absent
//
// QEMU acknowledges ReaderAdd, ReaderRemove, ATR and CardRemove in order with
// an Error message, code 0 on success; an Error sent by the client instead of
// an APDU answer fails the pending command. QEMU drops the connection on a
// single message over 64 KiB and never sends Flush.
//
// The constants follow libcacard's vscard_common.h; the behaviour was
// observed against QEMU 7.2 (see /work/shared/ccid/qemu-prototype).
package vscard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MsgType is the type of a VSCard message.
type MsgType uint32

// Message types (enum VSCMsgType).
const (
	MsgInit          MsgType = 1
	MsgError         MsgType = 2
	MsgReaderAdd     MsgType = 3
	MsgReaderRemove  MsgType = 4
	MsgATR           MsgType = 5
	MsgCardRemove    MsgType = 6
	MsgAPDU          MsgType = 7
	MsgFlush         MsgType = 8
	MsgFlushComplete MsgType = 9
)

var msgTypeNames = [...]string{
	MsgInit: "Init", MsgError: "Error", MsgReaderAdd: "ReaderAdd",
	MsgReaderRemove: "ReaderRemove", MsgATR: "ATR", MsgCardRemove: "CardRemove",
	MsgAPDU: "APDU", MsgFlush: "Flush", MsgFlushComplete: "FlushComplete",
}

func (t MsgType) String() string {
	if t > 0 && int(t) < len(msgTypeNames) {
		return msgTypeNames[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint32(t))
}

// ErrorCode is the payload of an Error message.
type ErrorCode uint32

// Error codes (enum VSCErrorCode).
const (
	CodeSuccess              ErrorCode = 0
	CodeGeneral              ErrorCode = 1
	CodeCannotAddMoreReaders ErrorCode = 2
	CodeCardAlreadyInserted  ErrorCode = 3
)

func (c ErrorCode) String() string {
	switch c {
	case CodeSuccess:
		return "success"
	case CodeGeneral:
		return "general error"
	case CodeCannotAddMoreReaders:
		return "cannot add more readers"
	case CodeCardAlreadyInserted:
		return "card already inserted"
	}
	return fmt.Sprintf("error code %d", uint32(c))
}

// Protocol constants.
const (
	// ReaderIDUndefined is the reader id of ReaderAdd and of replies that
	// concern no reader.
	ReaderIDUndefined uint32 = 0xFFFFFFFF
	// Version is VSCARD_VERSION, MAKE_VERSION(0, 0, 2).
	Version uint32 = 2
	// HeaderLen is the length of a message header.
	HeaderLen = 12
	// MaxMessageLen is QEMU's receive buffer (VSCARD_IN_SIZE): a message,
	// header included, must not be longer. It is also the limit this
	// package reads.
	MaxMessageLen = 64 * 1024
	// MaxPayloadLen is the longest payload that fits in MaxMessageLen.
	MaxPayloadLen = MaxMessageLen - HeaderLen
	// MaxATRLen is the longest ATR QEMU accepts (MAX_ATR_SIZE).
	MaxATRLen = 40
)

// Magic opens an Init payload; it is compared as raw bytes, not swapped.
var Magic = [4]byte{'V', 'S', 'C', 'D'}

// Errors of the wire layer. Parse errors wrap ErrMalformed.
var (
	// ErrMalformed: a message or payload does not follow the protocol.
	ErrMalformed = errors.New("vscard: malformed message")
	// ErrTooLarge: a message is longer than MaxMessageLen.
	ErrTooLarge = errors.New("vscard: message too large")
)

// Message is one VSCard message.
type Message struct {
	Type     MsgType
	ReaderID uint32
	Payload  []byte
}

func (m Message) String() string {
	return fmt.Sprintf("%v(reader=%#x, %d bytes)", m.Type, m.ReaderID, len(m.Payload))
}

// Append appends the encoded message to b. It fails with ErrTooLarge when
// the message would be longer than MaxMessageLen.
func (m Message) Append(b []byte) ([]byte, error) {
	if len(m.Payload) > MaxPayloadLen {
		return b, fmt.Errorf("%w: %v payload of %d bytes", ErrTooLarge, m.Type, len(m.Payload))
	}
	b = binary.BigEndian.AppendUint32(b, uint32(m.Type))
	b = binary.BigEndian.AppendUint32(b, m.ReaderID)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Payload)))
	return append(b, m.Payload...), nil
}

// Parse decodes the first message in b and returns it with the number of
// bytes it used. A b too short for a whole message gives io.ErrUnexpectedEOF
// (io.EOF when b is empty); the payload aliases b.
func Parse(b []byte) (Message, int, error) {
	if len(b) == 0 {
		return Message{}, 0, io.EOF
	}
	if len(b) < HeaderLen {
		return Message{}, 0, io.ErrUnexpectedEOF
	}
	n := binary.BigEndian.Uint32(b[8:])
	if n > MaxPayloadLen {
		return Message{}, 0, fmt.Errorf("%w: payload length %d", ErrTooLarge, n)
	}
	end := HeaderLen + int(n)
	if len(b) < end {
		return Message{}, 0, io.ErrUnexpectedEOF
	}
	return Message{
		Type:     MsgType(binary.BigEndian.Uint32(b)),
		ReaderID: binary.BigEndian.Uint32(b[4:]),
		Payload:  b[HeaderLen:end:end],
	}, end, nil
}

// ReadMessage reads one message from r. It returns io.EOF only when r ends
// cleanly between messages.
func ReadMessage(r io.Reader) (Message, error) {
	var hdr [HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Message{}, err
	}
	n := binary.BigEndian.Uint32(hdr[8:])
	if n > MaxPayloadLen {
		return Message{}, fmt.Errorf("%w: payload length %d", ErrTooLarge, n)
	}
	m := Message{
		Type:     MsgType(binary.BigEndian.Uint32(hdr[:])),
		ReaderID: binary.BigEndian.Uint32(hdr[4:]),
		Payload:  make([]byte, n),
	}
	if _, err := io.ReadFull(r, m.Payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Message{}, fmt.Errorf("reading %v payload: %w", m.Type, err)
	}
	return m, nil
}

// Init is the payload of an Init message.
type Init struct {
	Version      uint32
	Capabilities []uint32
}

// Marshal encodes the Init payload, magic included.
func (in Init) Marshal() []byte {
	b := append([]byte(nil), Magic[:]...)
	b = binary.BigEndian.AppendUint32(b, in.Version)
	for _, c := range in.Capabilities {
		b = binary.BigEndian.AppendUint32(b, c)
	}
	return b
}

// ParseInit decodes an Init payload: magic, version, then zero or more
// capability words.
func ParseInit(p []byte) (Init, error) {
	if len(p) < 8 {
		return Init{}, fmt.Errorf("%w: Init payload of %d bytes", ErrMalformed, len(p))
	}
	if [4]byte(p) != Magic {
		return Init{}, fmt.Errorf("%w: Init magic % X", ErrMalformed, p[:4])
	}
	if len(p)%4 != 0 {
		return Init{}, fmt.Errorf("%w: Init capabilities of %d bytes", ErrMalformed, len(p)-8)
	}
	in := Init{Version: binary.BigEndian.Uint32(p[4:])}
	for i := 8; i < len(p); i += 4 {
		in.Capabilities = append(in.Capabilities, binary.BigEndian.Uint32(p[i:]))
	}
	return in, nil
}

// ParseError decodes the code of an Error payload.
func ParseError(p []byte) (ErrorCode, error) {
	if len(p) != 4 {
		return 0, fmt.Errorf("%w: Error payload of %d bytes", ErrMalformed, len(p))
	}
	return ErrorCode(binary.BigEndian.Uint32(p)), nil
}

// ErrorPayload encodes an Error payload.
func ErrorPayload(c ErrorCode) []byte {
	return binary.BigEndian.AppendUint32(nil, uint32(c))
}
