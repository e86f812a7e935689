package ccid

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// HeaderLen is the length of every bulk message header: bMessageType,
// dwLength (LE), bSlot, bSeq and three message-specific bytes.
const HeaderLen = 10

// MessageType is bMessageType.
type MessageType byte

// Bulk-out (PC_to_RDR), bulk-in (RDR_to_PC) and interrupt-in message
// types (CCID rev 1.1 §6).
const (
	PCToRDRSetParameters                MessageType = 0x61
	PCToRDRIccPowerOn                   MessageType = 0x62
	PCToRDRIccPowerOff                  MessageType = 0x63
	PCToRDRGetSlotStatus                MessageType = 0x65
	PCToRDRSecure                       MessageType = 0x69
	PCToRDRT0APDU                       MessageType = 0x6A
	PCToRDREscape                       MessageType = 0x6B
	PCToRDRGetParameters                MessageType = 0x6C
	PCToRDRResetParameters              MessageType = 0x6D
	PCToRDRIccClock                     MessageType = 0x6E
	PCToRDRXfrBlock                     MessageType = 0x6F
	PCToRDRMechanical                   MessageType = 0x71
	PCToRDRAbort                        MessageType = 0x72
	PCToRDRSetDataRateAndClockFrequency MessageType = 0x73

	RDRToPCDataBlock                 MessageType = 0x80
	RDRToPCSlotStatus                MessageType = 0x81
	RDRToPCParameters                MessageType = 0x82
	RDRToPCEscape                    MessageType = 0x83
	RDRToPCDataRateAndClockFrequency MessageType = 0x84

	RDRToPCNotifySlotChange MessageType = 0x50
	RDRToPCHardwareError    MessageType = 0x51
)

var messageNames = map[MessageType]string{
	PCToRDRSetParameters: "SetParameters", PCToRDRIccPowerOn: "IccPowerOn", PCToRDRIccPowerOff: "IccPowerOff",
	PCToRDRGetSlotStatus: "GetSlotStatus", PCToRDRSecure: "Secure", PCToRDRT0APDU: "T0APDU",
	PCToRDREscape: "Escape", PCToRDRGetParameters: "GetParameters", PCToRDRResetParameters: "ResetParameters",
	PCToRDRIccClock: "IccClock", PCToRDRXfrBlock: "XfrBlock", PCToRDRMechanical: "Mechanical",
	PCToRDRAbort: "Abort", PCToRDRSetDataRateAndClockFrequency: "SetDataRateAndClockFrequency",
	RDRToPCDataBlock: "DataBlock", RDRToPCSlotStatus: "SlotStatus", RDRToPCParameters: "Parameters",
	RDRToPCEscape: "Escape response", RDRToPCDataRateAndClockFrequency: "DataRateAndClockFrequency",
	RDRToPCNotifySlotChange: "NotifySlotChange", RDRToPCHardwareError: "HardwareError",
}

func (t MessageType) String() string {
	if n, ok := messageNames[t]; ok {
		return n
	}
	return fmt.Sprintf("message %#02x", byte(t))
}

// Response reports the RDR_to_PC message type that answers command type
// t (ok is false for types that are not commands).
func (t MessageType) Response() (MessageType, bool) {
	switch t {
	case PCToRDRIccPowerOn, PCToRDRXfrBlock, PCToRDRSecure:
		return RDRToPCDataBlock, true
	case PCToRDRIccPowerOff, PCToRDRGetSlotStatus, PCToRDRIccClock, PCToRDRT0APDU,
		PCToRDRMechanical, PCToRDRAbort:
		return RDRToPCSlotStatus, true
	case PCToRDRGetParameters, PCToRDRResetParameters, PCToRDRSetParameters:
		return RDRToPCParameters, true
	case PCToRDREscape:
		return RDRToPCEscape, true
	case PCToRDRSetDataRateAndClockFrequency:
		return RDRToPCDataRateAndClockFrequency, true
	}
	return 0, false
}

// Message is one bulk message, either direction.
type Message struct {
	Type MessageType
	Slot byte
	Seq  byte
	// Param is header bytes 7..9. Commands: the message-specific
	// parameters (bPowerSelect; bBWI and wLevelParameter; bProtocolNum;
	// ...). Responses: bStatus, bError and bChainParameter /
	// bClockStatus / bProtocolNum.
	Param [3]byte
	Data  []byte
}

// Bulk message errors.
var (
	// ErrFrame is wrapped by every error about a malformed message.
	ErrFrame = errors.New("malformed CCID message")
)

// AppendMessage appends the encoded message to dst.
func AppendMessage(dst []byte, m Message) []byte {
	var h [HeaderLen]byte
	h[0] = byte(m.Type)
	binary.LittleEndian.PutUint32(h[1:], uint32(len(m.Data)))
	h[5], h[6] = m.Slot, m.Seq
	copy(h[7:], m.Param[:])
	dst = append(dst, h[:]...)
	return append(dst, m.Data...)
}

// ParseMessage parses one bulk message. dwLength must equal the number
// of bytes after the header, as libccid's CCID_Receive demands. Data
// aliases b.
func ParseMessage(b []byte) (Message, error) {
	if len(b) < HeaderLen {
		return Message{}, fmt.Errorf("%w: %d bytes, the header alone is %d", ErrFrame, len(b), HeaderLen)
	}
	n := binary.LittleEndian.Uint32(b[1:])
	if uint64(n) != uint64(len(b)-HeaderLen) {
		return Message{}, fmt.Errorf("%w: %v dwLength %d but %d bytes received after the header",
			ErrFrame, MessageType(b[0]), n, len(b)-HeaderLen)
	}
	m := Message{Type: MessageType(b[0]), Slot: b[5], Seq: b[6], Data: b[HeaderLen:len(b):len(b)]}
	copy(m.Param[:], b[7:HeaderLen])
	return m, nil
}

// Response status (bStatus) decoding.

// ICCStatus is bmICCStatus, bits 0-1 of bStatus.
type ICCStatus byte

// ICC status values.
const (
	ICCActive   ICCStatus = 0 // present and active
	ICCInactive ICCStatus = 1 // present, not activated
	ICCAbsent   ICCStatus = 2 // no card
)

func (s ICCStatus) String() string {
	switch s {
	case ICCActive:
		return "card present and active"
	case ICCInactive:
		return "card present, inactive"
	case ICCAbsent:
		return "no card"
	}
	return "ICC status RFU"
}

// Command status (bmCommandStatus, bits 6-7 of bStatus).
const (
	cmdStatusOK      = 0
	cmdStatusFailed  = 1
	cmdStatusTimeExt = 2
)

// Status returns bStatus of a response.
func (m Message) Status() byte { return m.Param[0] }

// ICC returns the ICC status of a response.
func (m Message) ICC() ICCStatus { return ICCStatus(m.Param[0] & 3) }

// Failed reports whether a response says the command failed.
func (m Message) Failed() bool { return m.Param[0]>>6 == cmdStatusFailed }

// TimeExtension reports whether a response is a time extension request.
func (m Message) TimeExtension() bool { return m.Param[0]>>6 == cmdStatusTimeExt }

// ErrorCode returns bError of a response.
func (m Message) ErrorCode() byte { return m.Param[1] }

// Chain returns bChainParameter of a DataBlock.
func (m Message) Chain() byte { return m.Param[2] }

// String renders a message for logs.
func (m Message) String() string {
	return fmt.Sprintf("%v slot %d seq %d param % X, %d data bytes", m.Type, m.Slot, m.Seq, m.Param[:], len(m.Data))
}

// Command builders. Each returns the message without slot and sequence
// number, which the sender fills in.

// Power selection for IccPowerOn (bPowerSelect).
const (
	VoltageAuto byte = 0
	Voltage5V   byte = 1
	Voltage3V   byte = 2
	Voltage18V  byte = 3
)

// voltageName names a bPowerSelect value.
func voltageName(v byte) string {
	switch v {
	case Voltage5V:
		return "5 V"
	case Voltage3V:
		return "3 V"
	case Voltage18V:
		return "1.8 V"
	}
	return "automatic voltage"
}

// voltageBit is the bVoltageSupport bit for a bPowerSelect value.
func voltageBit(v byte) uint8 {
	switch v {
	case Voltage5V:
		return 1
	case Voltage3V:
		return 2
	case Voltage18V:
		return 4
	}
	return 0
}

// IccPowerOn builds PC_to_RDR_IccPowerOn.
func IccPowerOn(voltage byte) Message {
	return Message{Type: PCToRDRIccPowerOn, Param: [3]byte{voltage}}
}

// IccPowerOff builds PC_to_RDR_IccPowerOff.
func IccPowerOff() Message { return Message{Type: PCToRDRIccPowerOff} }

// GetSlotStatus builds PC_to_RDR_GetSlotStatus.
func GetSlotStatus() Message { return Message{Type: PCToRDRGetSlotStatus} }

// Chaining values of wLevelParameter (commands) and bChainParameter
// (responses) at the extended APDU level.
const (
	ChainNone     = 0x00 // begins and ends here
	ChainBegin    = 0x01 // begins, continues in the next block
	ChainEnd      = 0x02 // continues and ends here
	ChainContinue = 0x03 // continues, another block follows
	ChainMore     = 0x10 // empty block: send me the next part
)

// XfrBlock builds PC_to_RDR_XfrBlock with block waiting time extension
// bwi and level parameter level.
func XfrBlock(bwi byte, level uint16, data []byte) Message {
	return Message{Type: PCToRDRXfrBlock, Param: [3]byte{bwi, byte(level), byte(level >> 8)}, Data: data}
}

// GetParameters builds PC_to_RDR_GetParameters.
func GetParameters() Message { return Message{Type: PCToRDRGetParameters} }

// ResetParameters builds PC_to_RDR_ResetParameters.
func ResetParameters() Message { return Message{Type: PCToRDRResetParameters} }

// SetParameters builds PC_to_RDR_SetParameters: data is the 5-byte T=0
// or 7-byte T=1 protocol data structure.
func SetParameters(protocol byte, data []byte) Message {
	return Message{Type: PCToRDRSetParameters, Param: [3]byte{protocol}, Data: data}
}

// Escape builds PC_to_RDR_Escape.
func Escape(data []byte) Message { return Message{Type: PCToRDREscape, Data: data} }

// IccClock builds PC_to_RDR_IccClock (0 restart, 1 stop).
func IccClock(stop bool) Message {
	m := Message{Type: PCToRDRIccClock}
	if stop {
		m.Param[0] = 1
	}
	return m
}

// T0APDU builds PC_to_RDR_T0APDU.
func T0APDU(changes, classGetResponse, classEnvelope byte) Message {
	return Message{Type: PCToRDRT0APDU, Param: [3]byte{changes, classGetResponse, classEnvelope}}
}

// Secure builds PC_to_RDR_Secure.
func Secure(bwi byte, level uint16, data []byte) Message {
	return Message{Type: PCToRDRSecure, Param: [3]byte{bwi, byte(level), byte(level >> 8)}, Data: data}
}

// Mechanical builds PC_to_RDR_Mechanical.
func Mechanical(function byte) Message {
	return Message{Type: PCToRDRMechanical, Param: [3]byte{function}}
}

// Abort builds PC_to_RDR_Abort.
func Abort() Message { return Message{Type: PCToRDRAbort} }

// SetDataRateAndClockFrequency builds
// PC_to_RDR_SetDataRateAndClockFrequency (clock in kHz, rate in bit/s).
func SetDataRateAndClockFrequency(clockKHz, rate uint32) Message {
	d := make([]byte, 8)
	binary.LittleEndian.PutUint32(d, clockKHz)
	binary.LittleEndian.PutUint32(d[4:], rate)
	return Message{Type: PCToRDRSetDataRateAndClockFrequency, Data: d}
}

// ClockAndRate decodes RDR_to_PC_DataRateAndClockFrequency.
func (m Message) ClockAndRate() (clockKHz, rate uint32, err error) {
	if len(m.Data) != 8 {
		return 0, 0, fmt.Errorf("%w: DataRateAndClockFrequency with %d data bytes, want 8", ErrFrame, len(m.Data))
	}
	return binary.LittleEndian.Uint32(m.Data), binary.LittleEndian.Uint32(m.Data[4:]), nil
}

// Interrupt-in messages.

// SlotChange is one slot's state in RDR_to_PC_NotifySlotChange.
type SlotChange struct {
	Slot    int
	Present bool
	Changed bool
}

// Notification is a parsed interrupt-in message.
type Notification struct {
	Type MessageType
	// Slots is set for NotifySlotChange: every slot the message covers.
	Slots []SlotChange
	// Slot, Seq and Code are set for HardwareError.
	Slot, Seq, Code byte
}

// ParseNotification parses an interrupt-in message for a reader with
// nslots slots. A NotifySlotChange carries 2 bits per slot (bit 0
// present, bit 1 changed), four slots per byte from byte 1; slots
// beyond the bytes received are left out.
func ParseNotification(b []byte, nslots int) (Notification, error) {
	if len(b) == 0 {
		return Notification{}, fmt.Errorf("%w: empty interrupt message", ErrFrame)
	}
	n := Notification{Type: MessageType(b[0])}
	switch n.Type {
	case RDRToPCNotifySlotChange:
		if len(b) < 2 {
			return Notification{}, fmt.Errorf("%w: NotifySlotChange without slot bits", ErrFrame)
		}
		for s := 0; s < nslots && 1+s/4 < len(b); s++ {
			bits := b[1+s/4] >> (2 * (s % 4))
			n.Slots = append(n.Slots, SlotChange{Slot: s, Present: bits&1 != 0, Changed: bits&2 != 0})
		}
	case RDRToPCHardwareError:
		if len(b) < 4 {
			return Notification{}, fmt.Errorf("%w: HardwareError of %d bytes, want 4", ErrFrame, len(b))
		}
		n.Slot, n.Seq, n.Code = b[1], b[2], b[3]
	default:
		return Notification{}, fmt.Errorf("%w: interrupt message type %#02x", ErrFrame, b[0])
	}
	return n, nil
}

// AppendNotifySlotChange encodes RDR_to_PC_NotifySlotChange for the
// given slots (for simulated readers).
func AppendNotifySlotChange(dst []byte, nslots int, present, changed func(slot int) bool) []byte {
	dst = append(dst, byte(RDRToPCNotifySlotChange))
	nb := (nslots + 3) / 4
	for i := 0; i < nb; i++ {
		var v byte
		for j := 0; j < 4 && i*4+j < nslots; j++ {
			s := i*4 + j
			if present(s) {
				v |= 1 << (2 * j)
			}
			if changed(s) {
				v |= 2 << (2 * j)
			}
		}
		dst = append(dst, v)
	}
	return dst
}
