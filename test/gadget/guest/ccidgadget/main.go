// Command ccidgadget is a CCID smart card reader made of the guest's own
// USB device side: run in the test VM (dummy_hcd and gadgetfs loaded), it
// registers a reader of one lab profile through GadgetFS, with a
// simulated card (card/sim) in every slot, and answers the host's
// PC_to_RDR messages with package ccidsim's reader logic (exchange level,
// PPS and SetParameters, T=1 card side, extended APDU chaining, busy
// slots, time extension, Abort) — the same logic the in-process tests
// use, here behind the real kernel USB stack.
//
//	ccidgadget -profile NAME -serial S [fault flags]
//
// -timing (on by default) makes every XfrBlock take the time its bytes
// need at the speed negotiated with the card; -ta1 11 gives the cards an
// ATR that asks for no faster speed.
//
// Fault flags (for TestGadgetUnplug, TestGadgetRemoval, TestGadgetMute):
//
//	-delay D          every XfrBlock takes D (the card is slow)
//	-wtx D            with -delay: the reader sends a time extension
//	                  (bmCommandStatus 2) every D while the card works
//	-mute             the card in slot 0 never answers an XfrBlock (ICC_MUTE)
//	-unplug-at N      exit (unplug) on receiving the Nth XfrBlock, with its
//	                  answer still outstanding when -delay is set
//	-remove-at N      take the card out of slot 0 once the Nth XfrBlock is
//	                  answered, and put a fresh one in -reinsert-after later
//	-unplug-on HEX    exit (unplug) on receiving an XfrBlock whose data
//	                  starts with HEX (an APDU only the user sends)
//	-stall-at N       on receiving the Nth XfrBlock, halt bulk-in instead
//	                  of answering (the host's read fails with a stall)
//	-replug-at N      on receiving the Nth XfrBlock, unplug and plug in
//	                  again -replug-after later: the program executes
//	                  itself anew (closing the GadgetFS files) with
//	                  -start-delay, and registers the device again
//
// The -on flags pick the XfrBlock by its data (an APDU only the user
// sends, not the host's own identification), for the full-stack pass;
// each acts on that XfrBlock alone, the card behaves for the next one:
//
//	-slow-on HEX      -delay and -wtx apply to this XfrBlock only
//	-mute-on HEX      the card in slot 0 is mute for it (ICC_MUTE)
//	-stall-on HEX     halt bulk-in instead of answering it
//
// SIGUSR1 takes the card out of slot 0, or puts a fresh one in when the
// slot is empty (for a test script that removes and inserts on its own
// schedule).
//
// Output (stdout, one line each, for the test to read from the console):
//
//	ready                         the host configured the device
//	rx TYPE SLOT SEQ PARAM LEN DATA   a message the host sent (lab.RecordLine)
//	log TEXT                      ep0 events and errors
//	stats maxbusy=N slotbusy=M    at the end: most slots busy at once,
//	                              commands refused with "slot busy"
//
// SIGTERM (or SIGINT) ends it: exiting closes the GadgetFS files, which
// the host sees as the reader being unplugged.
package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/ccid/ccidsim"
	"github.com/wsrc-go/wsrc/test/gadget/internal/gadgetfs"
	"github.com/wsrc-go/wsrc/test/gadget/internal/lab"
)

// Endpoint addresses and the dummy_udc files that serve them (the file
// names are dummy_hcd's; the numbers must match).
const (
	bulkIn  = 0x81
	bulkOut = 0x02
	intIn   = 0x85
)

// faults are the fault flags.
var faults struct {
	delay, wtx         time.Duration
	mute               bool
	unplugAt, removeAt int
	reinsertAfter      time.Duration
	unplugOn           string
	replugAt, stallAt  int
	replugAfter        time.Duration

	slowOn, muteOn, stallOn string
}

// baseQuirks are the card quirks of slot i from the fault flags, as
// inserted; the -on flags change them for one XfrBlock.
func baseQuirks(i int) ccidsim.CardQuirks {
	q := ccidsim.CardQuirks{Delay: faults.delay, WTX: faults.wtx, Mute: faults.mute && i == 0}
	if faults.slowOn != "" {
		q.Delay, q.WTX = 0, 0
	}
	return q
}

var epFiles = map[byte]string{bulkIn: "ep1in-bulk", bulkOut: "ep2out-bulk", intIn: "ep5in-int"}

// out serialises the program's output lines.
var out = struct {
	sync.Mutex
}{}

func say(format string, args ...any) {
	out.Lock()
	fmt.Printf(format+"\n", args...)
	out.Unlock()
}

func main() {
	name := flag.String("profile", "", "lab profile (test/gadget/internal/lab)")
	serial := flag.String("serial", "wsrc-lab", "USB serial number string")
	timing := flag.Bool("timing", true, "cards take the byte time of the negotiated speed (ccidsim SetCardTiming)")
	ta1 := flag.Uint("ta1", 0, "the cards' TA1 (default: the profile card's own, 96)")
	flag.DurationVar(&faults.delay, "delay", 0, "time every XfrBlock takes")
	flag.BoolVar(&faults.mute, "mute", false, "the card in slot 0 is mute")
	flag.DurationVar(&faults.wtx, "wtx", 0, "with -delay: send a time extension this often")
	flag.IntVar(&faults.unplugAt, "unplug-at", 0, "exit on receiving the Nth XfrBlock")
	flag.IntVar(&faults.removeAt, "remove-at", 0, "remove the card in slot 0 after the Nth XfrBlock")
	flag.DurationVar(&faults.reinsertAfter, "reinsert-after", time.Second, "put a card back this long after -remove-at")
	flag.StringVar(&faults.unplugOn, "unplug-on", "", "exit on an XfrBlock whose data starts with this hex")
	flag.IntVar(&faults.replugAt, "replug-at", 0, "unplug on the Nth XfrBlock and plug in again")
	flag.IntVar(&faults.stallAt, "stall-at", 0, "halt bulk-in on the Nth XfrBlock")
	flag.DurationVar(&faults.replugAfter, "replug-after", time.Second, "how long -replug-at stays unplugged")
	flag.StringVar(&faults.slowOn, "slow-on", "", "-delay and -wtx only for an XfrBlock whose data starts with this hex")
	flag.StringVar(&faults.muteOn, "mute-on", "", "the card is mute for an XfrBlock whose data starts with this hex")
	flag.StringVar(&faults.stallOn, "stall-on", "", "halt bulk-in on an XfrBlock whose data starts with this hex")
	startDelay := flag.Duration("start-delay", 0, "wait this long before registering the device")
	flag.Parse()
	time.Sleep(*startDelay)
	p, ok := lab.Find(*name)
	if !ok {
		fmt.Fprintf(os.Stderr, "ccidgadget: no profile %q\n", *name)
		os.Exit(2)
	}
	card := p.CardConfig()
	if *ta1 != 0 {
		card = p.CardConfigTA1(byte(*ta1))
	}
	if err := run(p, card, *serial, *timing); err != nil {
		fmt.Fprintln(os.Stderr, "ccidgadget:", err)
		os.Exit(1)
	}
}

func run(p lab.Profile, card sim.Config, serial string, timing bool) error {
	rd, err := ccidsim.NewDevice(p.Reader, serial)
	if err != nil {
		return err
	}
	rd.SetCardTiming(timing)
	for i := range rd.Slots() {
		rd.Slot(i).Insert(sim.New(card), baseQuirks(i))
	}
	cfg := p.Reader.ConfigDescriptor(bulkIn, bulkOut, intIn)
	eps, err := endpointConfigs(cfg)
	if err != nil {
		return err
	}
	srv := &server{rd: rd, card: card}
	dev, err := gadgetfs.Open(gadgetfs.Config{
		Device:       deviceDescriptor(p.Reader),
		Config:       cfg,
		Strings:      map[uint8]string{1: p.Reader.Manufacturer, 2: p.Reader.Name, 3: serial},
		Endpoints:    eps,
		Class:        srv.class,
		Configured:   srv.start,
		Deconfigured: srv.stop,
		Log:          func(f string, a ...any) { say("log "+f, a...) },
	})
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	runErr := make(chan error, 1)
	go func() { runErr <- dev.Run() }()
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGUSR1 {
				toggleCard(rd.Slot(0), card)
				continue
			}
			st := rd.Stats()
			say("stats maxbusy=%d slotbusy=%d", st.MaxBusy, st.SlotBusy)
			say("log %v: unplugging", s)
			return nil // exiting closes the files: the host sees the unplug
		case err := <-runErr:
			return err
		}
	}
}

// toggleCard takes the card out of sl, or puts a fresh one in when sl is
// empty (SIGUSR1).
func toggleCard(sl *ccidsim.Slot, card sim.Config) {
	if sl.Present() {
		sl.Remove()
		say("log card removed from slot 0")
		return
	}
	sl.Insert(sim.New(card), baseQuirks(0))
	say("log card inserted in slot 0")
}

// deviceDescriptor is the 18-byte device descriptor of profile p:
// USB 2.0, full speed, the reader's VID:PID (libccid picks its quirks by
// them) and bcdDevice 6.00 (above every firmware libccid refuses).
func deviceDescriptor(p ccidsim.Profile) []byte {
	d := []byte{18, 1, 0x00, 0x02, 0, 0, 0, 64, 0, 0, 0, 0, 0x00, 0x06, 1, 2, 3, 1}
	binary.LittleEndian.PutUint16(d[8:], p.VendorID)
	binary.LittleEndian.PutUint16(d[10:], p.ProductID)
	return d
}

// endpointConfigs finds the endpoint descriptors in the configuration.
func endpointConfigs(cfg []byte) ([]gadgetfs.EndpointConfig, error) {
	var eps []gadgetfs.EndpointConfig
	for off := 0; off+2 <= len(cfg) && cfg[off] > 0; off += int(cfg[off]) {
		if cfg[off+1] != 5 || off+7 > len(cfg) {
			continue
		}
		d := cfg[off : off+7]
		f, ok := epFiles[d[2]]
		if !ok {
			return nil, fmt.Errorf("endpoint %02X has no dummy_udc file", d[2])
		}
		eps = append(eps, gadgetfs.EndpointConfig{File: f, Desc: d})
	}
	return eps, nil
}

// server moves messages between the endpoints and the simulated reader
// while the host has the device configured.
type server struct {
	rd   *ccidsim.Reader
	card sim.Config // the cards' configuration, for reinsertion

	// Owned by ep0's goroutine (start and stop run there).
	ep     *ccidsim.Endpoint
	cancel context.CancelFunc
	wg     sync.WaitGroup

	xfrs int                // XfrBlocks received; pumpOut's
	in   *gadgetfs.Endpoint // bulk-in while configured (set by start)
}

// removeAndReinsert takes the card out of slot 0 and, unless ctx ends
// first, puts a fresh one in after -reinsert-after (in a goroutine the
// pumps' WaitGroup covers).
func (s *server) removeAndReinsert(ctx context.Context) {
	sl := s.rd.Slot(0)
	sl.Remove()
	say("log card removed from slot 0")
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-time.After(faults.reinsertAfter):
			sl.Insert(sim.New(s.card), ccidsim.CardQuirks{})
			say("log card inserted in slot 0")
		case <-ctx.Done():
		}
	}()
}

// class answers the CCID class requests through the reader.
func (s *server) class(st gadgetfs.Setup, data []byte) ([]byte, error) {
	if s.ep == nil {
		return nil, gadgetfs.ErrStall
	}
	buf := data
	if st.In() {
		buf = make([]byte, st.Length)
	}
	n, err := s.ep.Control(st.RequestType, st.Request, st.Value, buf)
	if err != nil {
		say("log class request %v: stalled", st)
		return nil, gadgetfs.ErrStall
	}
	say("log class request %v: %d bytes", st, n)
	return buf[:n], nil
}

// start attaches the host and starts the pumps: bulk-out packets into
// messages for the reader, its answers to bulk-in, its notifications to
// the interrupt endpoint.
func (s *server) start(eps []*gadgetfs.Endpoint) {
	ep, err := s.rd.Attach()
	if err != nil {
		say("log attach: %v", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.ep, s.cancel = ep, cancel
	for _, e := range eps {
		s.wg.Add(1)
		switch e.Name {
		case epFiles[bulkOut]:
			go func() { defer s.wg.Done(); s.pumpOut(ctx, e) }()
		case epFiles[bulkIn]:
			s.in = e
			go func() { defer s.wg.Done(); s.pumpIn(ctx, e, ep.In) }()
		case epFiles[intIn]:
			go func() { defer s.wg.Done(); s.pumpIn(ctx, e, ep.Interrupt) }()
		default:
			s.wg.Done()
		}
	}
	ep.NotifyPresence()
	say("ready")
}

// stop detaches the host; the pumps end (their transfers fail once the
// host is gone, their reader calls with the context).
func (s *server) stop() {
	if s.ep == nil {
		return
	}
	s.cancel()
	s.ep.Close()
	s.wg.Wait()
	s.ep = nil
	say("log detached")
}

// pumpOut reads bulk-out packet by packet and hands each complete
// message (by its dwLength) to the reader, as reader firmware does: the
// host sends no zero-length packet after a message of whole packets.
func (s *server) pumpOut(ctx context.Context, e *gadgetfs.Endpoint) {
	pkt := make([]byte, e.MaxPacket)
	var msg []byte
	for ctx.Err() == nil {
		n, err := e.Read(pkt)
		if err != nil {
			if ctx.Err() == nil {
				say("log bulk-out: %v", err)
			}
			return
		}
		msg = append(msg, pkt[:n]...)
		if len(msg) < ccid.HeaderLen {
			if n < e.MaxPacket && len(msg) > 0 {
				say("log bulk-out: short message % x dropped", msg)
				msg = nil
			}
			continue
		}
		want := ccid.HeaderLen + int(binary.LittleEndian.Uint32(msg[1:5]))
		if len(msg) < want && n == e.MaxPacket {
			continue
		}
		m, err := ccid.ParseMessage(msg)
		if err == nil {
			say("%s", lab.RecordLine(m))
		} else {
			say("log bulk-out: %v", err)
		}
		xfr := 0
		if err == nil && m.Type == ccid.PCToRDRXfrBlock {
			s.xfrs++
			xfr = s.xfrs
		}
		if xfr > 0 && (xfr == faults.unplugAt || dataStarts(m, faults.unplugOn)) {
			say("log unplugging at XfrBlock %d", xfr)
			os.Exit(0) // closes the GadgetFS files: the host sees the unplug
		}
		if xfr > 0 && xfr == faults.replugAt {
			replug()
		}
		if xfr > 0 && (faults.slowOn != "" || faults.muteOn != "") && int(m.Slot) < s.rd.Slots() {
			q := baseQuirks(int(m.Slot))
			if dataStarts(m, faults.slowOn) {
				q.Delay, q.WTX = faults.delay, faults.wtx
				say("log XfrBlock %d: slow (%v, time extension every %v)", xfr, q.Delay, q.WTX)
			}
			if dataStarts(m, faults.muteOn) {
				q.Mute = true
				say("log XfrBlock %d: card mute", xfr)
			}
			s.rd.Slot(int(m.Slot)).SetQuirks(q)
		}
		if xfr > 0 && (xfr == faults.stallAt || dataStarts(m, faults.stallOn)) && s.in != nil {
			err := s.in.Halt()
			say("log bulk-in halted at XfrBlock %d (%v)", xfr, err)
			msg = nil
			continue
		}
		if err := s.ep.Out(msg); err != nil {
			return
		}
		msg = nil
		if xfr > 0 && xfr == faults.removeAt {
			s.removeAndReinsert(ctx)
		}
	}
}

// dataStarts reports whether m's data starts with the bytes of hexPrefix
// (never for an empty one).
func dataStarts(m ccid.Message, hexPrefix string) bool {
	return hexPrefix != "" && strings.HasPrefix(hex.EncodeToString(m.Data), hexPrefix)
}

// replug executes this program anew without -replug-at: the exec
// closes the GadgetFS files (all opened close-on-exec), which the host
// sees as an unplug, and the new image registers the device again after
// -start-delay.
func replug() {
	args := []string{os.Args[0], "-start-delay", faults.replugAfter.String()}
	flag.Visit(func(f *flag.Flag) {
		if f.Name != "replug-at" && f.Name != "start-delay" {
			args = append(args, "-"+f.Name+"="+f.Value.String())
		}
	})
	say("log replugging: %v", args[1:])
	exe, err := os.Executable()
	if err == nil {
		err = syscall.Exec(exe, args, os.Environ())
	}
	say("log replug: %v", err)
	os.Exit(1)
}

// pumpIn writes what next returns to endpoint e.
func (s *server) pumpIn(ctx context.Context, e *gadgetfs.Endpoint, next func(context.Context) ([]byte, error)) {
	for {
		msg, err := next(ctx)
		if err != nil {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, ccidsim.ErrDetached) {
				say("log %s: %v", e.Name, err)
			}
			return
		}
		if len(msg) > 7 && msg[0] == byte(ccid.RDRToPCDataBlock) && msg[7]>>6 == 2 {
			say("log %s: time extension", e.Name)
		}
		if err := e.Write(msg); err != nil {
			if ctx.Err() == nil {
				say("log %s: %v", e.Name, err)
			}
			return
		}
	}
}
