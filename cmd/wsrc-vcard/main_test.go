package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/wsrc-go/wsrc/card/sim"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParse(t *testing.T) {
	c, err := parse(nil, io.Discard)
	if err != nil || c.addr != "127.0.0.1:35963" || c.card.Protocol != sim.T0 || c.card.ICCID != sim.DefaultICCID {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	c, err = parse([]string{"--vpcd", "127.0.0.1:35964", "--protocol", "t1", "--iccid", "89882119900000000017", "--eid", "-"}, io.Discard)
	if err != nil || c.addr != "127.0.0.1:35964" || c.card.Protocol != sim.T1 || c.card.EID != sim.NoEID {
		t.Fatalf("flags: %+v, %v", c, err)
	}
	for _, bad := range [][]string{
		{"--protocol", "t2"},
		{"--iccid", "xyz"},
		{"--eid", "1234"},
		{"extra"},
		{"--nope"},
	} {
		if _, err := parse(bad, io.Discard); err == nil {
			t.Errorf("parse(%q) accepted", bad)
		}
	}
	if _, err := parse([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h = %v", err)
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--version"}, &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "wsrc-vcard ") {
		t.Fatalf("--version: %q, %v", out.String(), err)
	}
}

// TestServesVPCD plays vpcd on loopback and asks the card for its ATR.
func TestServesVPCD(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		done <- run(ctx, []string{"--vpcd", ln.Addr().String(), "--protocol", "t1"}, io.Discard, io.Discard)
	}()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte{0x00, 0x01, 0x04}) // get ATR
	var hdr [2]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		t.Fatal(err)
	}
	atr := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(conn, atr); err != nil || !bytes.Equal(atr, sim.ATRT1) {
		t.Fatalf("ATR %x, %v", atr, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run = %v", err)
	}
}
