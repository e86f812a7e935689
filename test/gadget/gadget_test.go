package gadget

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/ccid"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm"
	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
	"github.com/wsrc-go/wsrc/test/gadget/internal/lab"
)

// hosts are the two host stacks every profile runs under: Debian's pcscd
// + libccid (the reference) and our ccid package.
var hosts = []string{"libccid", "wsrc"}

// run is one (profile, host) pass in the lab VM: the script's steps as
// the host got them and the CCID messages the gadget received.
type run struct {
	steps  []lab.Step
	rx     []lab.Rx
	oracle []string // the oracle's whole output
	gadget []string // the gadget's whole output
}

// labVM boots the lab once per test process: for every profile and host,
// a fresh gadget (new serial number, so the host sees a new device), the
// oracle through that host, then the gadget unplugged.
var labVM struct {
	once sync.Once
	runs map[string]*run // "profile/host"
	con  *qemuvm.Console // the whole console, for the full-stack pass
	took time.Duration
}

func labRuns(t *testing.T) map[string]*run {
	t.Helper()
	p := need(t)
	labVM.once.Do(func() {
		start := time.Now()
		initrd := buildImage(t, p)
		var s vmscript.Builder
		s.Modules(gadgetModules...)
		if os.Getenv("ORACLE_PCSCD_DEBUG") == "1" {
			s.Env("ORACLE_PCSCD_DEBUG", "1")
		}
		for _, pr := range profiles() {
			if !passEnabled("script") {
				break
			}
			for _, h := range hosts {
				id := pr.Name + "-" + h
				serial := "lab-" + id
				s.Start("gadget-"+id, "ccidgadget", "-profile", pr.Name, "-serial", serial)
				s.Run("oracle-"+id, "oracle", "-host", h, "-profile", pr.Name, "-serial", serial, "-timeout", "90s")
				s.Stop("gadget-" + id)
			}
		}
		for _, f := range faultRuns {
			if !passEnabled("faults") {
				break
			}
			id := f.id()
			serial := "lab-" + id
			s.Start("gadget-"+id, append([]string{"ccidgadget", "-profile", f.profile, "-serial", serial}, f.gadget...)...)
			s.Run("oracle-"+id, "oracle", "-host", f.host, "-profile", f.profile, "-serial", serial, "-fault", f.fault, "-timeout", "90s")
			s.Stop("gadget-" + id)
		}
		if passEnabled("bench") {
			addBenchRuns(&s, benchRuns())
		}
		if passEnabled("fullstack") {
			addFullStack(&s)
		}
		con := runVM(t, p, initrd, s.String())
		labVM.con = con
		labVM.runs = map[string]*run{}
		for _, pr := range profiles() {
			for _, h := range hosts {
				id := pr.Name + "-" + h
				r := &run{oracle: con.Output("oracle-" + id), gadget: con.Output("gadget-" + id)}
				for _, l := range r.oracle {
					if st, ok := lab.ParseStep(l); ok {
						r.steps = append(r.steps, st)
					}
				}
				for _, l := range r.gadget {
					if rx, ok := lab.ParseRecord(l); ok {
						r.rx = append(r.rx, rx)
					}
				}
				labVM.runs[pr.Name+"/"+h] = r
			}
		}
		for _, f := range faultRuns {
			id := f.id()
			labVM.runs[f.scenario+"/"+f.profile+"/"+f.host] = &run{oracle: con.Output("oracle-" + id), gadget: con.Output("gadget-" + id)}
		}
		for _, b := range benchRuns() {
			id := b.id()
			labVM.runs[id] = &run{oracle: con.Output("labbench-" + id), gadget: con.Output("gadget-" + id)}
		}
		labVM.took = time.Since(start)
		t.Logf("lab: %d profiles × %d hosts in one VM, %.1fs with the build", len(profiles()), len(hosts), labVM.took.Seconds())
	})
	if labVM.runs == nil {
		t.Fatal("the lab VM did not run (see the first test's log)")
	}
	return labVM.runs
}

// profilesEnv limits the lab to the named profiles (comma-separated),
// for debugging one reader.
const profilesEnv = "WSRC_GADGET_PROFILES"

func profiles() []lab.Profile {
	v := os.Getenv(profilesEnv)
	if v == "" {
		return lab.Profiles
	}
	var out []lab.Profile
	for _, p := range lab.Profiles {
		if slices.Contains(strings.Split(v, ","), p.Name) {
			out = append(out, p)
		}
	}
	return out
}

// passesEnv limits the lab to some groups of passes (comma-separated:
// script, faults, bench, fullstack), for debugging; tests of the others
// then fail for want of output.
const passesEnv = "WSRC_GADGET_PASSES"

func passEnabled(group string) bool {
	v := os.Getenv(passesEnv)
	return v == "" || slices.Contains(strings.Split(v, ","), group)
}

// recordEnv set to 1 logs every message the gadget received.
const recordEnv = "WSRC_GADGET_RECORD"

// expected runs the script on the profile's card directly, in process.
func expected(p lab.Profile) []lab.Step {
	return lab.Script(context.Background(), sim.New(p.CardConfig()), p.Extended())
}

// TestGadgetScript runs the same APDU script on every lab reader through
// pcscd + libccid and through our driver: both must give the responses
// the card gives when asked directly. Steps named raw-* are the first
// response as the host returned it and are compared between hosts only
// in the log (a T=0 host may fetch 61xx itself; ours does).
func TestGadgetScript(t *testing.T) {
	runs := labRuns(t)
	for _, p := range profiles() {
		t.Run(p.Name, func(t *testing.T) {
			want := expected(p)
			for _, h := range hosts {
				t.Run(h, func(t *testing.T) {
					r := runs[p.Name+"/"+h]
					if len(r.steps) == 0 {
						t.Fatalf("no script output; oracle said:\n%s\ngadget said:\n%s", strings.Join(r.oracle, "\n"), strings.Join(r.gadget, "\n"))
					}
					got := map[string]string{}
					for _, s := range r.steps {
						got[s.Name] = s.Result
					}
					for _, w := range want {
						g, ok := got[w.Name]
						switch {
						case !ok:
							t.Errorf("%s: missing", w.Name)
						case strings.HasPrefix(w.Name, "raw-"):
							if g != w.Result {
								t.Logf("%s: %s (the card itself: %s)", w.Name, short(g), short(w.Result))
							}
						case g != w.Result:
							t.Errorf("%s:\n got %s\nwant %s", w.Name, short(g), short(w.Result))
						}
					}
					if t.Failed() {
						t.Logf("oracle output:\n%s", strings.Join(r.oracle, "\n"))
						t.Logf("gadget output:\n%s", strings.Join(r.gadget, "\n"))
					}
				})
			}
		})
	}
}

// TestGadgetNegotiation compares what each host negotiated with each lab
// reader, from the CCID messages the gadget received: voltages of
// IccPowerOn, PPS, SetParameters, the T=1 IFSD. Each host must power the
// card at a voltage the reader offers; both must start at the same
// voltage and send the same PPS requests, SetParameters and IFSD (as
// sets: how often differs, see negotiation). Other differences (polling,
// libccid's vendor Escape, powering every slot) are logged and explained
// in docs/ccid.md.
func TestGadgetNegotiation(t *testing.T) {
	runs := labRuns(t)
	for _, p := range profiles() {
		t.Run(p.Name, func(t *testing.T) {
			neg := map[string]negotiation{}
			for _, h := range hosts {
				t.Run(h, func(t *testing.T) {
					r := runs[p.Name+"/"+h]
					if len(r.rx) == 0 {
						t.Fatalf("the gadget recorded nothing:\n%s", strings.Join(r.gadget, "\n"))
					}
					n := negotiate(r.rx)
					neg[h] = n
					t.Logf("%s", n)
					if os.Getenv(recordEnv) == "1" {
						for _, rx := range r.rx {
							t.Log(rx.Line)
						}
					}
					d := p.Reader.Descriptor
					for _, v := range n.voltages {
						if v != ccid.VoltageAuto && d.VoltageSupport&voltageBit(v) == 0 {
							t.Errorf("IccPowerOn at bPowerSelect %d, which the reader does not offer (bVoltageSupport %#x)", v, d.VoltageSupport)
						}
					}
					if len(n.voltages) == 0 {
						t.Errorf("no IccPowerOn")
					}
				})
			}
			a, b := neg["libccid"], neg["wsrc"]
			if a.types == nil || b.types == nil {
				return
			}
			if a.agreed() != b.agreed() {
				t.Errorf("the hosts negotiated differently:\nlibccid: %s\n   wsrc: %s", a.agreed(), b.agreed())
			}
			if a.String() != b.String() {
				t.Logf("the hosts' messages differ (docs/ccid.md explains):\nlibccid: %s\n   wsrc: %s", a, b)
			}
		})
	}
}

// negotiation is what a host did besides APDUs, as sets (sorted,
// without repeats): how often a host powers a card up or polls differs
// by design; what it agrees with card and reader on must not.
type negotiation struct {
	voltage  byte // bPowerSelect of the first IccPowerOn
	voltages []byte
	pps      []string // PPS requests: the first XfrBlock after an IccPowerOn, starting FF
	setParam []string // "T=p:data" of SetParameters
	ifsd     []string // IFSD of the host's S(IFS request) blocks
	types    map[ccid.MessageType]int
}

func negotiate(rx []lab.Rx) negotiation {
	n := negotiation{types: map[ccid.MessageType]int{}}
	afterPowerOn := false
	for _, m := range rx {
		n.types[m.Type]++
		switch m.Type {
		case ccid.PCToRDRIccPowerOn:
			var v byte
			fmt.Sscanf(m.Param[:2], "%02x", &v)
			if len(n.voltages) == 0 {
				n.voltage = v
			}
			n.voltages = append(n.voltages, v)
			afterPowerOn = true
		case ccid.PCToRDRSetParameters:
			n.setParam = addSet(n.setParam, "T="+m.Param[1:2]+":"+m.Data)
		case ccid.PCToRDRXfrBlock:
			switch {
			case afterPowerOn && strings.HasPrefix(m.Data, "ff") && m.Len >= 3 && m.Len <= 6:
				n.pps = addSet(n.pps, m.Data)
			case len(m.Data) >= 8 && m.Data[2:4] == "c1": // S(IFS request)
				n.ifsd = addSet(n.ifsd, m.Data[6:8])
			}
			afterPowerOn = false
		}
	}
	return n
}

func addSet(set []string, v string) []string {
	if !slices.Contains(set, v) {
		set = append(set, v)
		slices.Sort(set)
	}
	return set
}

// agreed is what both hosts must have done alike.
func (n negotiation) agreed() string {
	return fmt.Sprintf("first IccPowerOn at bPowerSelect %d, PPS %v, SetParameters %v, IFSD %v", n.voltage, n.pps, n.setParam, n.ifsd)
}

func (n negotiation) String() string {
	var types []string
	for t, c := range n.types {
		types = append(types, fmt.Sprintf("%v×%d", t, c))
	}
	sort.Strings(types)
	return fmt.Sprintf("%s; all IccPowerOn %v; messages %s", n.agreed(), n.voltages, strings.Join(types, " "))
}

func voltageBit(v byte) byte {
	switch v {
	case ccid.Voltage5V:
		return 1
	case ccid.Voltage3V:
		return 2
	case ccid.Voltage18V:
		return 4
	}
	return 0
}

// short cuts a long hex result for messages.
func short(s string) string {
	if len(s) > 80 {
		return fmt.Sprintf("%s…(%d hex digits)", s[:80], len(s))
	}
	return s
}

// faultRun is one fault scenario pass in the lab VM: a gadget with fault
// flags and the oracle's -fault mode (see guest/ccidgadget, guest/oracle).
type faultRun struct {
	scenario, profile, host, fault string
	gadget                         []string // the gadget's fault flags
}

func (f faultRun) id() string { return f.scenario + "-" + f.profile + "-" + f.host }

// faultRuns are the fault scenarios, through the real kernel USB stack.
// ACR39U has an interrupt endpoint and negotiates by itself (the first
// XfrBlock is the first APDU); NoInterrupt is polled, and its T=1 card's
// first XfrBlock is the IFSD exchange. The removal passes answer at once
// (-timing=false): the card must leave after its answer is sent.
var faultRuns = []faultRun{
	{"Unplug", "ACR39U", "wsrc", "unplug", []string{"-delay", "1s", "-unplug-at", "2"}},
	{"Removal", "ACR39U", "wsrc", "removal", []string{"-timing=false", "-remove-at", "1", "-reinsert-after", "1s"}},
	{"Removal", "NoInterrupt", "wsrc", "removal", []string{"-timing=false", "-remove-at", "2", "-reinsert-after", "1s"}},
	{"Mute", "ACR39U", "wsrc", "mute", []string{"-mute"}},
	{"Abort", "CT30", "wsrc", "abort", []string{"-timing=false", "-delay", "3s"}},
	{"TimeExtension", "ACR39U", "wsrc", "wtx", []string{"-timing=false", "-delay", "3s", "-wtx", "500ms"}},
	{"TimeExtension", "ACR39U", "libccid", "wtx", []string{"-timing=false", "-delay", "3s", "-wtx", "500ms"}},
	{"Stall", "ACR39U", "wsrc", "stall", []string{"-timing=false", "-stall-at", "2"}},
	{"Replug", "SCR3310", "wsrc", "replug", []string{"-timing=false", "-replug-at", "3", "-replug-after", "1s"}},
	{"Mute", "ACR39U", "libccid", "mute", []string{"-mute"}},
}

// faults returns the oracle's "fault WHAT k=v ..." lines by WHAT.
func faults(out []string) map[string]map[string]string {
	m := map[string]map[string]string{}
	for _, l := range out {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "fault" {
			continue
		}
		kv := map[string]string{}
		for _, w := range f[2:] {
			k, v, _ := strings.Cut(w, "=")
			kv[k] = v
		}
		m[f[1]] = kv
	}
	return m
}

// faultRunsOf runs check for every pass of scenario, as subtests
// <profile>/<host>.
func faultRunsOf(t *testing.T, scenario string, check func(t *testing.T, fl map[string]map[string]string)) {
	runs := labRuns(t)
	for _, f := range faultRuns {
		if f.scenario != scenario {
			continue
		}
		t.Run(f.profile+"/"+f.host, func(t *testing.T) {
			r := runs[scenario+"/"+f.profile+"/"+f.host]
			if r == nil {
				t.Skipf("%s not in this lab run (%s)", f.profile, profilesEnv)
			}
			fl := faults(r.oracle)
			check(t, fl)
			if t.Failed() || testing.Verbose() {
				t.Logf("oracle:\n%s", strings.Join(r.oracle, "\n"))
			}
			if t.Failed() {
				t.Logf("gadget:\n%s", strings.Join(r.gadget, "\n"))
			}
		})
	}
}

// TestGadgetUnplug unplugs the reader (the gadget exits, GadgetFS closes)
// while an APDU is in flight: our driver must fail that APDU with
// card.ErrRemoved at once, not after the card's waiting time, and report
// the reader removed.
func TestGadgetUnplug(t *testing.T) {
	faultRunsOf(t, "Unplug", func(t *testing.T, fl map[string]map[string]string) {
		tr, rr := fl["transmit"], fl["reader-removed"]
		if tr == nil || tr["removed"] != "true" {
			t.Errorf("the APDU in flight did not fail with card.ErrRemoved: %v", tr)
		}
		if ms := atoi(tr["ms"]); ms > 5000 {
			t.Errorf("the APDU in flight failed after %d ms; the unplug should end it at once", ms)
		}
		if rr == nil || rr["ms"] == "" {
			t.Errorf("no ReaderRemoved event: %v", rr)
		}
	})
}

// TestGadgetRemoval takes the card out after an APDU and puts a fresh one
// back a second later: CardRemoved, the old handle failing with
// card.ErrRemoved, CardInserted, and the new card working — by
// NotifySlotChange (ACR39U) and by polling (NoInterrupt).
func TestGadgetRemoval(t *testing.T) {
	faultRunsOf(t, "Removal", func(t *testing.T, fl map[string]map[string]string) {
		if fl["card-removed"] == nil || fl["card-removed"]["ms"] == "" {
			t.Errorf("no CardRemoved: %v", fl["card-removed"])
		}
		if ar := fl["after-removal"]; ar == nil || ar["removed"] != "true" {
			t.Errorf("the old handle did not fail with card.ErrRemoved: %v", ar)
		}
		if fl["card-inserted"] == nil || fl["card-inserted"]["ms"] == "" {
			t.Errorf("no CardInserted: %v", fl["card-inserted"])
		}
		if ri := fl["reinserted"]; ri == nil || ri["sw"] != "9000" {
			t.Errorf("the new card did not answer 9000: %v", ri)
		}
	})
}

// TestGadgetMute sends an APDU to a mute card (the reader answers
// ICC_MUTE and deactivates it): both hosts must fail it at once; ours
// with card.ErrMute.
func TestGadgetMute(t *testing.T) {
	faultRunsOf(t, "Mute", func(t *testing.T, fl map[string]map[string]string) {
		tr := fl["transmit"]
		switch {
		case tr == nil:
			t.Fatalf("no result")
		case tr["failed"] == "false":
			t.Errorf("libccid: the APDU to a mute card succeeded")
		case tr["failed"] == "" && tr["mute"] != "true":
			t.Errorf("our driver did not fail with card.ErrMute: %v", tr)
		}
		if ms := atoi(tr["ms"]); ms > 5000 {
			t.Errorf("took %d ms; ICC_MUTE should end the APDU at once", ms)
		}
	})
}

// TestGadgetReplug unplugs the reader while an APDU is in flight and plugs
// it in again a second later, with the driver's periodic rescan set to an
// hour: the reader and its card must come back through the kernel's
// netlink uevents alone, and the new card must work.
func TestGadgetReplug(t *testing.T) {
	faultRunsOf(t, "Replug", func(t *testing.T, fl map[string]map[string]string) {
		if tr := fl["transmit"]; tr == nil || tr["removed"] != "true" {
			t.Errorf("the APDU in flight did not fail with card.ErrRemoved: %v", tr)
		}
		if fl["reader-removed"] == nil || fl["reader-removed"]["ms"] == "" {
			t.Errorf("no ReaderRemoved: %v", fl["reader-removed"])
		}
		if ci := fl["card-inserted"]; ci == nil || ci["ms"] == "" {
			t.Errorf("the replugged reader's card was not found (netlink): %v", ci)
		}
		if ri := fl["reinserted"]; ri == nil || ri["sw"] != "9000" {
			t.Errorf("the card after the replug did not answer 9000: %v", ri)
		}
	})
}

// TestGadgetAbort cancels an APDU to a slow card with the caller's
// deadline: our driver must return at the deadline, abort the command on
// the reader (the ABORT class request and PC_to_RDR_Abort, both seen by
// the gadget), and the slot must work for the next APDU.
func TestGadgetAbort(t *testing.T) {
	runs := labRuns(t)
	faultRunsOf(t, "Abort", func(t *testing.T, fl map[string]map[string]string) {
		c := fl["cancelled"]
		if c == nil || c["deadline"] != "true" {
			t.Errorf("the APDU under a 1 s deadline did not end with it: %v", c)
		}
		if ms := atoi(c["ms"]); ms > 2500 {
			t.Errorf("the cancelled APDU returned after %d ms", ms)
		}
		if a := fl["after"]; a == nil || a["sw"] != "9000" {
			t.Errorf("the slot did not work after the abort: %v", a)
		}
		g := runs["Abort/CT30/wsrc"].gadget
		var bulk, class bool
		for _, l := range g {
			if rx, ok := lab.ParseRecord(l); ok && rx.Type == ccid.PCToRDRAbort {
				bulk = true
			}
			if strings.HasPrefix(l, "log class request 21 01 ") {
				class = true
			}
		}
		if !bulk || !class {
			t.Errorf("the reader saw PC_to_RDR_Abort %v, the ABORT class request %v", bulk, class)
		}
	})
}

// TestGadgetTimeExtension gives the card 3 s for one APDU while the reader
// sends a time extension every 0.5 s: both hosts must wait for the real
// answer (9000 after the 3 s), not take a time extension for it.
func TestGadgetTimeExtension(t *testing.T) {
	faultRunsOf(t, "TimeExtension", func(t *testing.T, fl map[string]map[string]string) {
		tr := fl["transmit"]
		if tr == nil || tr["sw"] != "9000" {
			t.Errorf("the slow APDU did not end in 9000: %v", tr)
		}
		if ms := atoi(tr["ms"]); ms < 2900 {
			t.Errorf("answered after %d ms, before the card was done (3 s)", ms)
		}
	})
}

// TestGadgetStall halts the reader's bulk-in endpoint instead of
// answering an APDU: the APDU must fail, not hang, and the driver must
// bring the reader back (USB reset and reclaim) so that the card works
// again.
func TestGadgetStall(t *testing.T) {
	faultRunsOf(t, "Stall", func(t *testing.T, fl map[string]map[string]string) {
		tr := fl["transmit"]
		if tr == nil || tr["failed"] != "true" {
			t.Errorf("the stalled APDU did not fail: %v", tr)
		}
		if ms := atoi(tr["ms"]); ms > 15000 {
			t.Errorf("the stalled APDU failed after %d ms", ms)
		}
		if ri := fl["recovered"]; ri == nil || ri["sw"] != "9000" {
			t.Errorf("the card did not work again after the stall: %v (card-inserted %v)", ri, fl["card-inserted"])
		}
	})
}

func atoi(s string) int {
	n := 0
	fmt.Sscanf(s, "%d", &n)
	return n
}
