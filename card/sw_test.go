package card

import (
	"errors"
	"fmt"
	"testing"
)

func TestSWError(t *testing.T) {
	for _, sw := range []uint16{0x9000, 0x9110, 0x9200} {
		if err := SWError(sw); err != nil {
			t.Errorf("%04x: %v", sw, err)
		}
	}
	for _, tc := range []struct {
		sw   uint16
		is   []error
		isnt []error
		msg  string
	}{
		{0x6a82, []error{ErrFileNotFound}, []error{ErrRecordNotFound, ErrWrongP1P2}, "6a82: file or application not found"},
		{0x6a83, []error{ErrRecordNotFound}, []error{ErrFileNotFound}, "6a83: record not found"},
		{0x6700, []error{ErrWrongLength}, nil, "6700: wrong length"},
		{0x6781, []error{ErrWrongLength}, nil, "6781: wrong length"},
		{0x6c0a, []error{ErrWrongLe}, []error{ErrWrongLength}, "6c0a: wrong Le, 10 bytes available"},
		{0x6982, []error{ErrSecurityNotSatisfied}, nil, "6982: security status not satisfied"},
		{0x6983, []error{ErrAuthBlocked}, nil, "6983: authentication method blocked"},
		{0x6985, []error{ErrConditionsNotSatisfied}, nil, "6985: conditions of use not satisfied"},
		{0x6986, []error{ErrCommandNotAllowed}, nil, "6986: command not allowed (no EF selected)"},
		{0x6d00, []error{ErrINSNotSupported}, nil, "6d00: instruction code not supported or invalid"},
		{0x6e00, []error{ErrCLANotSupported}, []error{ErrINSNotSupported}, "6e00: class not supported"},
		{0x6a86, []error{ErrWrongP1P2}, nil, "6a86: incorrect parameters P1-P2"},
		{0x6b00, []error{ErrWrongP1P2}, nil, "6b00: wrong parameters P1-P2 (offset outside the EF)"},
		{0x6a80, []error{ErrWrongData}, nil, "6a80: incorrect parameters in the data field"},
		{0x6110, nil, []error{ErrWrongLength}, "6110: 16 response bytes available"},
		{0x6100, nil, nil, "6100: 256 or more response bytes available"},
		{0x6f42, nil, nil, "6f42: technical problem"},
		{0x1234, nil, nil, "1234: unknown status"},
	} {
		err := SWError(tc.sw)
		if err == nil || err.Error() != tc.msg {
			t.Errorf("%04x: %v, want %q", tc.sw, err, tc.msg)
		}
		wrapped := fmt.Errorf("selecting EF.ICCID: %w", err)
		for _, s := range tc.is {
			if !errors.Is(wrapped, s) {
				t.Errorf("%04x is not %v", tc.sw, s)
			}
		}
		for _, s := range tc.isnt {
			if errors.Is(wrapped, s) {
				t.Errorf("%04x is %v", tc.sw, s)
			}
		}
		var se *StatusError
		if !errors.As(wrapped, &se) || se.SW != tc.sw {
			t.Errorf("%04x: As gives %v", tc.sw, se)
		}
		if !errors.Is(wrapped, &StatusError{SW: tc.sw}) || errors.Is(wrapped, &StatusError{SW: tc.sw + 1}) {
			t.Errorf("%04x: Is(*StatusError) wrong", tc.sw)
		}
	}
}

func TestVerifyRetries(t *testing.T) {
	err := fmt.Errorf("verifying PIN1: %w", SWError(0x63c2))
	var ve *VerifyRetriesError
	if !errors.As(err, &ve) || ve.Left != 2 {
		t.Fatalf("As: %v", ve)
	}
	if err.Error() != "verifying PIN1: 63c2: verification failed, 2 retries left" {
		t.Errorf("message %q", err)
	}
	if !errors.Is(err, ErrVerifyFailed) || errors.Is(err, ErrAuthBlocked) || !errors.Is(err, &StatusError{SW: 0x63c2}) {
		t.Error("63c2 matching")
	}
	if !errors.Is(err, &VerifyRetriesError{Left: 2}) || errors.Is(err, &VerifyRetriesError{Left: 1}) {
		t.Error("63c2 vs VerifyRetriesError")
	}
	if err := SWError(0x63c0); !errors.Is(err, ErrAuthBlocked) || !errors.Is(err, ErrVerifyFailed) {
		t.Errorf("63c0: %v", err)
	}
	if err := SWError(0x6300); !errors.Is(err, ErrVerifyFailed) {
		t.Errorf("6300: %v", err)
	}
}

func TestResponseError(t *testing.T) {
	data, err := ResponseError(h("01029000"))
	if err != nil || len(data) != 2 {
		t.Errorf("got %x %v", data, err)
	}
	if _, err := ResponseError(h("6a82")); !errors.Is(err, ErrFileNotFound) {
		t.Errorf("6a82: %v", err)
	}
	if _, err := ResponseError(nil); !errors.Is(err, ErrShortResponse) {
		t.Errorf("empty: %v", err)
	}
}
