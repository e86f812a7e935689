package pcsc

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/card"
)

func TestErrorMapping(t *testing.T) {
	all := []error{card.ErrRemoved, card.ErrNoCard, card.ErrMute, card.ErrReset, ErrServiceUnavailable, ErrReaderUnavailable}
	tests := []struct {
		code Code
		name string
		is   []error
	}{
		{CodeRemovedCard, "SCARD_W_REMOVED_CARD", []error{card.ErrRemoved}},
		{CodeNoSmartcard, "SCARD_E_NO_SMARTCARD", []error{card.ErrNoCard}},
		{CodeUnresponsiveCard, "SCARD_W_UNRESPONSIVE_CARD", []error{card.ErrMute}},
		{CodeNoService, "SCARD_E_NO_SERVICE", []error{ErrServiceUnavailable}},
		{CodeServiceStopped, "SCARD_E_SERVICE_STOPPED", []error{ErrServiceUnavailable}},
		{CodeReaderUnavailable, "SCARD_E_READER_UNAVAILABLE", []error{ErrReaderUnavailable}},
		{CodeUnknownReader, "SCARD_E_UNKNOWN_READER", []error{ErrReaderUnavailable}},
		{CodeSharingViolation, "SCARD_E_SHARING_VIOLATION", nil},
		{CodeTimeout, "SCARD_E_TIMEOUT", nil},
		{CodeCancelled, "SCARD_E_CANCELLED", nil},
		{CodeNoReadersAvailable, "SCARD_E_NO_READERS_AVAILABLE", nil},
		{CodeResetCard, "SCARD_W_RESET_CARD", []error{card.ErrReset}},
		{CodeNotTransacted, "SCARD_E_NOT_TRANSACTED", nil},
		{CodeInvalidHandle, "SCARD_E_INVALID_HANDLE", nil},
		{CodeInsufficientBuffer, "SCARD_E_INSUFFICIENT_BUFFER", nil},
		{Code(0x80100099), "SCARD_0x80100099", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := fmt.Errorf("doing it: %w", wrapErr("SCardTransmit", "Reader A 00 00", tt.code))
			if got := tt.code.String(); got != tt.name {
				t.Errorf("String = %q, want %q", got, tt.name)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.name) || !strings.Contains(msg, `"Reader A 00 00"`) || !strings.Contains(msg, "SCardTransmit") {
				t.Errorf("message %q lacks name, reader or call", msg)
			}
			if !errors.Is(err, tt.code) {
				t.Errorf("errors.Is(err, %v) = false", tt.code)
			}
			for _, s := range all {
				want := false
				for _, w := range tt.is {
					want = want || w == s
				}
				if got := errors.Is(err, s); got != want {
					t.Errorf("errors.Is(err, %v) = %v, want %v", s, got, want)
				}
			}
			var pe *Error
			if !errors.As(err, &pe) || pe.Code != tt.code || pe.Reader != "Reader A 00 00" {
				t.Errorf("errors.As *Error = %+v", pe)
			}
		})
	}
}

func TestErrorEveryNamedCodeHasAName(t *testing.T) {
	seen := map[string]bool{}
	for c, n := range codeNames {
		if !strings.HasPrefix(n, "SCARD_") || seen[n] {
			t.Errorf("code %#x: bad or duplicate name %q", uint32(c), n)
		}
		seen[n] = true
	}
}

func TestErrorRemovedFlag(t *testing.T) {
	err := &Error{Op: "SCardTransmit", Reader: "r", Code: CodeNotTransacted, Removed: true}
	if !errors.Is(err, card.ErrRemoved) || !errors.Is(err, CodeNotTransacted) {
		t.Fatalf("Removed error does not match both ErrRemoved and its code: %v", err)
	}
	if want := `SCardTransmit on reader "r": SCARD_E_NOT_TRANSACTED (0x80100016): card removed`; err.Error() != want {
		t.Fatalf("message %q, want %q", err.Error(), want)
	}
}

func TestWrapErrNonCode(t *testing.T) {
	base := errors.New("bad reader name")
	err := wrapErr("SCardConnect", "x", base)
	if !errors.Is(err, base) || !strings.Contains(err.Error(), `"x"`) {
		t.Fatalf("wrapErr(non-code) = %v", err)
	}
	if wrapErr("op", "", nil) != nil {
		t.Fatal("wrapErr(nil) != nil")
	}
	if err := wrapErr("SCardListReaders", "", CodeNoService); strings.Contains(err.Error(), "reader") {
		t.Fatalf("message without reader mentions one: %v", err)
	}
}

func TestProtocolString(t *testing.T) {
	for p, want := range map[Protocol]string{T0: "T=0", T1: "T=1", AnyProtocol: "T=0|T=1", 0: "none", 8: "protocol(8)"} {
		if got := p.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", p, got, want)
		}
	}
}
