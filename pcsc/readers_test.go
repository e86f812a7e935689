package pcsc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
)

func TestFilter(t *testing.T) {
	tests := []struct {
		name   string
		f      Filter
		reader string
		want   bool
	}{
		{"empty selects all", Filter{}, "Virtual PCD 00 00", true},
		{"glob include", Filter{Include: []string{"Virtual PCD*"}}, "Virtual PCD 00 01", true},
		{"glob include miss", Filter{Include: []string{"Virtual PCD*"}}, "ACS ACR39U 00 00", false},
		{"glob is whole-name", Filter{Include: []string{"PCD*"}}, "Virtual PCD 00 00", false},
		{"exclude wins", Filter{Include: []string{"*"}, Exclude: []string{"*01"}}, "Virtual PCD 00 01", false},
		{"regexp anywhere", Filter{Include: []string{"/(?i)yubikey/"}}, "Yubico YubiKey OTP+CCID 00 00", true},
		{"regexp anchored", Filter{Include: []string{"/^ACS/"}}, "Virtual ACS", false},
		{"regexp exclude", Filter{Exclude: []string{"/00 01$/"}}, "Virtual PCD 00 01", false},
		{"pnp never", Filter{}, pnpReader, false},
		{"lone slash is a glob", Filter{Include: []string{"/"}}, "/", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.f.Validate(); err != nil {
				t.Fatal(err)
			}
			if got := tt.f.Match(tt.reader); got != tt.want {
				t.Errorf("Match(%q) = %v, want %v", tt.reader, got, tt.want)
			}
		})
	}
}

func TestFilterWhy(t *testing.T) {
	f := Filter{Include: []string{"Virtual*", "/ACR/"}, Exclude: []string{"*01", "/(?i)yubikey/"}}
	for reader, want := range map[string]string{
		"Virtual PCD 00 00":      "",
		"ACS ACR39U 00 00":       "",
		"Virtual PCD 00 01":      `excluded by reader exclude pattern "*01"`,
		"Virtual YubiKey 00 00":  `excluded by reader exclude pattern "/(?i)yubikey/"`,
		"OMNIKEY 3x21 [1-1.2]":   "matches no reader include pattern",
		"Yubico YubiKey CCID 00": `excluded by reader exclude pattern "/(?i)yubikey/"`, // exclusion is named first
	} {
		if got := f.Why(reader); got != want {
			t.Errorf("Why(%q) = %q, want %q", reader, got, want)
		}
	}
	if got := (Filter{Exclude: []string{"[bad"}}).Why("x"); got == "" {
		t.Error("a bad pattern selects a reader")
	}
}

func TestFilterBadPatterns(t *testing.T) {
	for _, f := range []Filter{
		{Include: []string{"[unclosed"}},
		{Exclude: []string{"/(unclosed/"}},
	} {
		if err := f.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", f)
		}
		if f.Match("anything") {
			t.Errorf("bad filter %+v matched", f)
		}
		if _, err := listReaders(context.Background(), newFakeSys(), f); err == nil {
			t.Errorf("listReaders with bad filter %+v: no error", f)
		}
	}
}

func FuzzFilter(f *testing.F) {
	for _, s := range []string{"Virtual PCD*", "/(?i)yubikey/", "[unclosed", "/(unclosed/", "/", "", "\\", "*[a-"} {
		f.Add(s, "Virtual PCD 00 00")
	}
	f.Fuzz(func(t *testing.T, pat, reader string) {
		fl := Filter{Include: []string{pat}, Exclude: []string{pat}}
		if fl.Validate() == nil && fl.Match(reader) {
			t.Fatalf("pattern %q both included and excluded %q", pat, reader)
		}
	})
}

func TestReadersNoneIsEmptyList(t *testing.T) {
	sys := newFakeSys()
	got, err := listReaders(context.Background(), sys, Filter{})
	if err != nil || got == nil || len(got) != 0 {
		t.Fatalf("listReaders with no readers = %#v, %v; want empty non-nil list", got, err)
	}
	if _, live, _, _ := sys.counts(); live != 0 {
		t.Fatalf("%d contexts left established", live)
	}
}

func TestReadersFiltered(t *testing.T) {
	sys := newFakeSys()
	sys.addReader("Virtual PCD 00 00")
	sys.addReader("Virtual PCD 00 01")
	sys.addReader("Yubico YubiKey 00 00")
	got, err := listReaders(context.Background(), sys, Filter{Include: []string{"Virtual*"}, Exclude: []string{"*01"}})
	if err != nil || !slices.Equal(got, []string{"Virtual PCD 00 00"}) {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestReadersServiceDown(t *testing.T) {
	sys := newFakeSys()
	sys.setDown(true)
	_, err := listReaders(context.Background(), sys, Filter{})
	if !errors.Is(err, ErrServiceUnavailable) || !errors.Is(err, CodeNoService) {
		t.Fatalf("err = %v, want ErrServiceUnavailable", err)
	}
}

func TestReadersCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := listReaders(ctx, newFakeSys(), Filter{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}

func TestSnapshot(t *testing.T) {
	sys := newFakeSys()
	ctx := context.Background()
	got, err := snapshot(ctx, sys, Filter{})
	if err != nil || got == nil || len(got) != 0 {
		t.Fatalf("snapshot without readers = %v, %v", got, err)
	}
	sys.addReader("A")
	sys.addReader("B")
	sys.addReader("C")
	sys.insert("A", atrA)
	sys.insert("C", nil)
	got, err = snapshot(ctx, sys, Filter{})
	want := []ReaderEvent{present("A", atrA), absent("B"), {Reader: "C", CardPresent: true, Mute: true}}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("snapshot = %v, %v; want %v", got, err, want)
	}
	if _, live, _, _ := sys.counts(); live != 0 {
		t.Fatalf("%d contexts left", live)
	}
	sys.setDown(true)
	if _, err := snapshot(ctx, sys, Filter{}); !errors.Is(err, ErrServiceUnavailable) {
		t.Fatalf("snapshot with pcscd down = %v", err)
	}
	if _, err := snapshot(ctx, sys, Filter{Include: []string{"["}}); err == nil {
		t.Fatal("bad filter accepted")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := snapshot(cancelled, sys, Filter{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled snapshot = %v", err)
	}
}
