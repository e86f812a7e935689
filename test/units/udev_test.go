package units

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const rulesFile = "60-wsrc-agent.rules"

// udevKey is one KEY{attr}OP"value" of a rule.
type udevKey struct {
	Name, Attr, Op, Value string
}

// udevRule is one logical line of a rules file.
type udevRule struct {
	Line int
	Keys []udevKey
}

// keyKinds says, per udev key (udev(7)), whether it may match (m) and/or
// assign (a), and whether it takes {attr}: "req", "opt" or "".
var keyKinds = map[string]struct{ kinds, attr string }{
	"ACTION": {"m", ""}, "DEVPATH": {"m", ""}, "KERNEL": {"m", ""}, "KERNELS": {"m", ""},
	"SUBSYSTEM": {"m", ""}, "SUBSYSTEMS": {"m", ""}, "DRIVER": {"m", ""}, "DRIVERS": {"m", ""},
	"ATTRS": {"m", "req"}, "TAGS": {"m", ""}, "TEST": {"m", "opt"}, "PROGRAM": {"m", ""},
	"RESULT": {"m", ""}, "CONST": {"m", "req"},
	"NAME": {"ma", ""}, "SYMLINK": {"ma", ""}, "ATTR": {"ma", "req"}, "SYSCTL": {"ma", "req"},
	"ENV": {"ma", "req"}, "TAG": {"ma", ""},
	"OWNER": {"a", ""}, "GROUP": {"a", ""}, "MODE": {"a", ""}, "SECLABEL": {"a", "req"},
	"RUN": {"a", "opt"}, "LABEL": {"a", ""}, "GOTO": {"a", ""}, "IMPORT": {"a", "req"},
	"OPTIONS": {"a", ""},
}

// parseUdevRules parses udev rules syntax: comments, backslash
// continuations, and comma-separated KEY{attr}OP"value" items, checking
// each key's operator against udev(7) and that every GOTO has its LABEL
// further down.
func parseUdevRules(text string) ([]udevRule, error) {
	var rules []udevRule
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		n := i + 1
		line := strings.TrimSpace(lines[i])
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, "\\") + strings.TrimSpace(lines[i])
		}
		if line == "" || line[0] == '#' {
			continue
		}
		keys, err := parseUdevLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		rules = append(rules, udevRule{Line: n, Keys: keys})
	}
	labels := map[string]int{}
	for i, r := range rules {
		for _, k := range r.Keys {
			if k.Name == "LABEL" {
				if _, dup := labels[k.Value]; dup {
					return nil, fmt.Errorf("line %d: LABEL %q twice", r.Line, k.Value)
				}
				labels[k.Value] = i
			}
		}
	}
	for i, r := range rules {
		for _, k := range r.Keys {
			if k.Name == "GOTO" {
				if j, ok := labels[k.Value]; !ok || j <= i {
					return nil, fmt.Errorf("line %d: GOTO %q has no LABEL after it", r.Line, k.Value)
				}
			}
		}
	}
	return rules, nil
}

func parseUdevLine(s string) ([]udevKey, error) {
	var keys []udevKey
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			break
		}
		if len(keys) > 0 {
			if s[0] != ',' {
				return nil, fmt.Errorf("missing ',' before %q", s)
			}
			s = strings.TrimLeft(s[1:], " \t")
			if s == "" {
				return nil, fmt.Errorf("trailing ','")
			}
		}
		var k udevKey
		j := 0
		for j < len(s) && (s[j] >= 'A' && s[j] <= 'Z' || s[j] == '_') {
			j++
		}
		k.Name, s = s[:j], s[j:]
		kind, known := keyKinds[k.Name]
		if !known {
			return nil, fmt.Errorf("unknown key %q", k.Name)
		}
		if strings.HasPrefix(s, "{") {
			end := strings.IndexByte(s, '}')
			if end < 2 {
				return nil, fmt.Errorf("%s: bad {attribute}", k.Name)
			}
			k.Attr, s = s[1:end], s[end+1:]
		}
		switch {
		case kind.attr == "req" && k.Attr == "":
			return nil, fmt.Errorf("%s needs {attribute}", k.Name)
		case kind.attr == "" && k.Attr != "":
			return nil, fmt.Errorf("%s takes no {attribute}", k.Name)
		}
		for _, op := range []string{"==", "!=", "+=", "-=", ":=", "="} {
			if strings.HasPrefix(s, op) {
				k.Op, s = op, s[len(op):]
				break
			}
		}
		match := k.Op == "==" || k.Op == "!="
		switch {
		case k.Op == "":
			return nil, fmt.Errorf("%s: no operator", k.Name)
		case match && !strings.Contains(kind.kinds, "m"):
			return nil, fmt.Errorf("%s cannot be matched (%s)", k.Name, k.Op)
		case !match && !strings.Contains(kind.kinds, "a"):
			return nil, fmt.Errorf("%s cannot be assigned (%s)", k.Name, k.Op)
		case (k.Name == "LABEL" || k.Name == "GOTO" || k.Name == "ATTR" && !match) && k.Op != "=":
			return nil, fmt.Errorf("%s takes only '='", k.Name)
		}
		if !strings.HasPrefix(s, `"`) {
			return nil, fmt.Errorf("%s: value not in double quotes", k.Name)
		}
		end := strings.IndexByte(s[1:], '"')
		if end < 0 {
			return nil, fmt.Errorf("%s: unterminated value", k.Name)
		}
		k.Value, s = s[1:1+end], s[end+2:]
		if s != "" && s[0] != ',' && s[0] != ' ' && s[0] != '\t' {
			return nil, fmt.Errorf("%s: junk %q after the value", k.Name, s)
		}
		if k.Name == "MODE" {
			if _, err := strconv.ParseUint(k.Value, 8, 12); err != nil || len(k.Value) < 3 {
				return nil, fmt.Errorf("MODE %q is not an octal mode", k.Value)
			}
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// usbEvent is a simulated uevent as udev sees it after 50-udev-default.rules.
type usbEvent struct {
	Action, Subsystem string
	Env               map[string]string // DEVTYPE, ID_USB_INTERFACES (if usb_id ran), ...
	Attr              map[string]string // sysfs attributes: idVendor, idProduct
	Interfaces        []string          // class/subclass/protocol, for the usb_id builtin
}

// outcome is what the rules did to the event.
type outcome struct{ Group, Mode string }

// evalUdev runs rules over ev the way udevd does for the keys our file
// uses; a key it does not model fails the test so the model cannot
// silently drift from the file.
func evalUdev(t *testing.T, rules []udevRule, ev usbEvent) outcome {
	t.Helper()
	env := map[string]string{}
	for k, v := range ev.Env {
		env[k] = v
	}
	var out outcome
	labels := map[string]int{}
	for i, r := range rules {
		for _, k := range r.Keys {
			if k.Name == "LABEL" {
				labels[k.Value] = i
			}
		}
	}
	for i := 0; i < len(rules); i++ {
		r := rules[i]
		matched := true
		for _, k := range r.Keys {
			var actual string
			switch {
			case k.Op != "==" && k.Op != "!=":
				continue
			case k.Name == "ACTION":
				actual = ev.Action
			case k.Name == "SUBSYSTEM":
				actual = ev.Subsystem
			case k.Name == "ENV":
				actual = env[k.Attr]
			case k.Name == "ATTR":
				actual = ev.Attr[k.Attr]
			default:
				t.Fatalf("line %d: the evaluator does not model matching %s", r.Line, k.Name)
			}
			if globMatch(k.Value, actual) != (k.Op == "==") {
				matched = false
				break
			}
		}
		if !matched {
			continue
		}
		jump := -1
		for _, k := range r.Keys {
			switch {
			case k.Op == "==" || k.Op == "!=" || k.Name == "LABEL":
			case k.Name == "GROUP":
				out.Group = k.Value
			case k.Name == "MODE":
				out.Mode = k.Value
			case k.Name == "ENV":
				env[k.Attr] = k.Value
			case k.Name == "IMPORT" && k.Attr == "builtin" && k.Value == "usb_id":
				// udev's usb_id: ":CCSSPP" per distinct interface, then ":".
				var b strings.Builder
				var seen []string
				for _, c := range ev.Interfaces {
					if !slices.Contains(seen, c) {
						seen = append(seen, c)
						b.WriteString(":" + c)
					}
				}
				env["ID_USB_INTERFACES"] = b.String() + ":"
			case k.Name == "GOTO":
				jump = labels[k.Value]
			default:
				t.Fatalf("line %d: the evaluator does not model %s%s", r.Line, k.Name, k.Op)
			}
		}
		if jump >= 0 {
			i = jump - 1
		}
	}
	return out
}

// globMatch is udev's pattern matching: fnmatch(3) with '|' alternatives.
func globMatch(pattern, s string) bool {
	for _, alt := range strings.Split(pattern, "|") {
		if ok, err := path.Match(alt, s); err == nil && ok {
			return true
		}
	}
	return false
}

func loadRules(t *testing.T) []udevRule {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(unitsDir, rulesFile))
	if err != nil {
		t.Fatal(err)
	}
	rules, err := parseUdevRules(string(b))
	if err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	return rules
}

// usbDevice is an "add" event of a usb_device, after usb_id has run.
func usbDevice(vid, pid string, ifaces ...string) usbEvent {
	ev := usbEvent{
		Action: "add", Subsystem: "usb",
		Env:        map[string]string{"DEVTYPE": "usb_device"},
		Attr:       map[string]string{"idVendor": vid, "idProduct": pid},
		Interfaces: ifaces,
	}
	ev.Env["ID_USB_INTERFACES"] = ":" + strings.Join(ifaces, ":") + ":"
	return ev
}

func TestUdevRulesGrantReaders(t *testing.T) {
	rules := loadRules(t)
	reader := outcome{Group: "wsrc", Mode: "0660"}
	noUsbID := usbDevice("08e6", "3437", "0b0000")
	delete(noUsbID.Env, "ID_USB_INTERFACES")
	change := usbDevice("08e6", "3437", "0b0000")
	change.Action = "change"
	remove := usbDevice("08e6", "3437", "0b0000")
	remove.Action = "remove"
	iface := usbDevice("08e6", "3437", "0b0000")
	iface.Env = map[string]string{"DEVTYPE": "usb_interface"}
	iface.Attr = map[string]string{"bInterfaceClass": "0b"}
	hidraw := usbDevice("08e6", "3437", "0b0000")
	hidraw.Subsystem = "hidraw"

	for _, tc := range []struct {
		name string
		ev   usbEvent
		want outcome
	}{
		{"CCID reader", usbDevice("08e6", "3437", "0b0000"), reader},
		{"keyboard with a reader", usbDevice("046a", "0070", "030101", "0b0000"), reader},
		{"reader with a vendor interface too", usbDevice("096e", "0608", "0b0000", "ff0000"), reader},
		{"ICCD token (subclass/protocol set)", usbDevice("1050", "0407", "030101", "0b0001"), reader},
		{"usb_id not yet run", noUsbID, reader},
		{"change event", change, reader},
		{"vendor-class reader on the list", usbDevice("04e6", "5111", "ff0000"), reader},
		{"unknown vendor-class device", usbDevice("1234", "5678", "ff0000"), outcome{}},
		{"listed vendor with another product", usbDevice("04e6", "5410", "ff0000"), outcome{}},
		{"mass storage", usbDevice("0781", "5567", "080650"), outcome{}},
		{"hub", usbDevice("1d6b", "0002", "090000"), outcome{}},
		{"class 0b0 lookalike", usbDevice("1234", "0001", "0a0b00"), outcome{}},
		{"remove event", remove, outcome{}},
		{"interface, not device", iface, outcome{}},
		{"other subsystem", hidraw, outcome{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := evalUdev(t, rules, tc.ev); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestUdevRulesGroupExists: the group the rules give is the one that
// wsrc.sysusers.conf creates and the agent runs as.
func TestUdevRulesGroupExists(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(unitsDir, "wsrc.sysusers.conf"))
	if err != nil {
		t.Fatal(err)
	}
	groups := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && (f[0] == "g" || f[0] == "u") {
			groups[f[1]] = true
		}
	}
	agentGroup, _ := loadUnit(t, "wsrc-agent.service").last("Service", "Group")
	for _, r := range loadRules(t) {
		for _, k := range r.Keys {
			if k.Name == "GROUP" && (!groups[k.Value] || k.Value != agentGroup) {
				t.Errorf("line %d: GROUP=%q: sysusers creates %v, the agent runs as group %q",
					r.Line, k.Value, groups, agentGroup)
			}
		}
	}
}

// TestUdevRulesVendorList: the vendor-class readers granted by the rules
// are exactly those package ccid accepts (vendorReaders in
// ccid/usbdesc.go, read from the source since it is unexported).
func TestUdevRulesVendorList(t *testing.T) {
	const src = "../../ccid/usbdesc.go"
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, src, nil, 0)
	if err != nil {
		t.Fatalf("reading package ccid's vendor list: %v", err)
	}
	var want []string
	found := false
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != "vendorReaders" || len(vs.Values) != 1 {
			return true
		}
		found = true
		lit, _ := vs.Values[0].(*ast.CompositeLit)
		for _, e := range lit.Elts {
			kv, _ := e.(*ast.KeyValueExpr)
			key, _ := kv.Key.(*ast.CompositeLit)
			if key == nil || len(key.Elts) != 2 {
				t.Fatalf("%s: unexpected vendorReaders entry at %v", src, fset.Position(e.Pos()))
			}
			var ids [2]uint64
			for i, el := range key.Elts {
				bl, _ := el.(*ast.BasicLit)
				if bl == nil {
					t.Fatalf("%s: non-literal id at %v", src, fset.Position(el.Pos()))
				}
				ids[i], err = strconv.ParseUint(bl.Value, 0, 16)
				if err != nil {
					t.Fatal(err)
				}
			}
			want = append(want, fmt.Sprintf("%04x:%04x", ids[0], ids[1]))
		}
		return false
	})
	if !found || len(want) == 0 {
		t.Fatalf("%s has no vendorReaders map any more; point this test at the list the CCID backend uses", src)
	}

	var got []string
	for _, r := range loadRules(t) {
		var vid, pid string
		for _, k := range r.Keys {
			if k.Name == "ATTR" && k.Op == "==" && k.Attr == "idVendor" {
				vid = k.Value
			}
			if k.Name == "ATTR" && k.Op == "==" && k.Attr == "idProduct" {
				pid = k.Value
			}
		}
		if vid != "" && pid != "" {
			got = append(got, vid+":"+pid)
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s lists vendor readers\n%v\nbut package ccid accepts\n%v", rulesFile, got, want)
	}
	// And each of them really gets the group.
	rules := loadRules(t)
	for _, id := range want {
		vid, pid, _ := strings.Cut(id, ":")
		if o := evalUdev(t, rules, usbDevice(vid, pid, "ff0000")); o.Group != "wsrc" {
			t.Errorf("vendor reader %s: %+v", id, o)
		}
	}
}

var badRules = []string{
	`FOO=="x"`,
	`ACTION="add"`,
	`GROUP=="wsrc"`,
	`ENV=="x"`,
	`SUBSYSTEM{x}=="usb"`,
	`ACTION==add`,
	`ACTION=="add`,
	`ACTION=="add" GROUP="x"`,
	`ACTION=="add",`,
	`MODE="rw"`,
	`GOTO="nowhere"`,
	`GOTO=="x"`,
	"LABEL=\"a\"\nGOTO=\"a\"",
	`ATTR{power/control}+="on"`,
	`ACTION=="add"x`,
}

func TestParseUdevRulesRejects(t *testing.T) {
	for _, r := range badRules {
		if _, err := parseUdevRules(r); err == nil {
			t.Errorf("%q: no error", r)
		}
	}
	ok := "# c\nACTION==\"remove\", GOTO=\"end\"\nENV{A}==\"\", \\\n  IMPORT{builtin}=\"usb_id\"\nLABEL=\"end\"\n"
	if _, err := parseUdevRules(ok); err != nil {
		t.Errorf("valid rules rejected: %v", err)
	}
}

func FuzzParseUdevRules(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join(unitsDir, rulesFile)); err == nil {
		f.Add(string(b))
	}
	for _, r := range badRules {
		f.Add(r)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rules, err := parseUdevRules(s)
		if err != nil {
			return
		}
		for _, r := range rules {
			if len(r.Keys) == 0 {
				t.Fatalf("line %d: a rule without keys", r.Line)
			}
		}
	})
}

// TestUdevadmVerify runs systemd's own checker where it exists (v254+).
func TestUdevadmVerify(t *testing.T) {
	ua, err := execLookPath("udevadm")
	if err != nil {
		t.Skip("no udevadm (Debian package udev); the Go-level checks above still ran")
	}
	if help, _ := run(t, ua, "--help"); !strings.Contains(help, "verify") {
		t.Skip("udevadm has no verify (systemd < 254); the Go-level checks above still ran")
	}
	path, _ := filepath.Abs(filepath.Join(unitsDir, rulesFile))
	out, err := run(t, ua, "verify", "--resolve-names=never", path)
	if err != nil {
		t.Errorf("udevadm verify: %v\n%s", err, out)
	}
	t.Logf("udevadm verify:\n%s", out)
}
