package deb

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// repoRoot is the repository, relative to this package.
const repoRoot = "../.."

// The packages and architectures scripts/package.sh builds.
var (
	packageNames = []string{"wsrc-agent", "wsrc-server", "wsrc"}
	debArches    = []string{"amd64", "arm64", "armhf"}
)

// strict reports whether a missing package or tool fails the tests
// instead of skipping them: in CI, and in `make deb-test`.
func strict() bool {
	return os.Getenv("CI") == "true" || os.Getenv("WSRC_DEB_TEST") == "1"
}

// skipOrFail skips the test with msg, or fails it when strict.
func skipOrFail(t *testing.T, msg string) {
	t.Helper()
	if strict() {
		t.Fatal(msg + " (required under CI=true and WSRC_DEB_TEST=1)")
	}
	t.Skip(msg + "; skipping")
}

// need returns the path of tool, or skips (fails when strict) saying which
// Debian package brings it.
func need(t *testing.T, tool, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		skipOrFail(t, tool+" not found (Debian package "+debianPackage+")")
	}
	return p
}

// run runs a command with a time limit and extra environment, and returns
// its combined output.
func run(t *testing.T, env []string, name string, args ...string) (string, error) {
	t.Helper()
	return runIn(t, "", env, name, args...)
}

// runIn is run in directory dir.
func runIn(t *testing.T, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Env = append(append(os.Environ(), "LC_ALL=C.UTF-8"), env...)
	err := cmd.Run()
	return out.String(), err
}

// mustRun is run that fails the test on an error.
func mustRun(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	out, err := run(t, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// entry is one member of a package's data or control archive.
type entry struct {
	Name  string // absolute path ("/usr/bin/wsrc"), or the control member's name
	Type  byte   // tar.TypeReg, tar.TypeDir, tar.TypeSymlink, ...
	Mode  fs.FileMode
	Uid   int
	Gid   int
	Uname string
	Gname string
	Link  string
	Data  []byte
}

// debPackage is a built .deb, read once.
type debPackage struct {
	Path    string
	Name    string            // Package:
	Arch    string            // Architecture:
	Control map[string]string // control fields; continuation lines joined with "\n"
	Files   map[string]entry  // data archive, by absolute path
	Ctrl    map[string]entry  // control archive (control, md5sums, conffiles, postinst, ...)
}

// debDir is where the packages are: $WSRC_DEB_DIR, else build/deb.
func debDir() string {
	if d := os.Getenv("WSRC_DEB_DIR"); d != "" {
		return d
	}
	return filepath.Join(repoRoot, "build", "deb")
}

var (
	debsOnce sync.Once
	debsErr  error
	debs     map[string]*debPackage // by "name_arch"
)

// builtDebs returns every package in debDir by "name_arch". It skips the
// test (fails it under WSRC_DEB_TEST=1) when packages are missing, and
// fails it when a package cannot be read or one is there twice.
func builtDebs(t *testing.T) map[string]*debPackage {
	t.Helper()
	need(t, "dpkg-deb", "dpkg")
	debsOnce.Do(func() { debs, debsErr = readDebs(debDir()) })
	var missing *missingError
	switch {
	case errors.As(debsErr, &missing):
		if os.Getenv("WSRC_DEB_TEST") == "1" {
			t.Fatal(debsErr)
		}
		t.Skip(debsErr.Error() + "; run `make deb` first")
	case debsErr != nil:
		t.Fatal(debsErr)
	}
	return debs
}

// missingError says which packages are not in the directory.
type missingError struct {
	dir     string
	missing []string
}

func (e *missingError) Error() string {
	return fmt.Sprintf("%s: no package %s", e.dir, strings.Join(e.missing, ", "))
}

// readDebs reads every *.deb in dir and checks that each package and
// architecture is there exactly once.
func readDebs(dir string) (map[string]*debPackage, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.deb"))
	if err != nil {
		return nil, err
	}
	out := map[string]*debPackage{}
	for _, p := range paths {
		d, err := readDeb(p)
		if err != nil {
			return nil, err
		}
		key := d.Name + "_" + d.Arch
		if prev, ok := out[key]; ok {
			return nil, fmt.Errorf("%s and %s are both %s: remove stale packages (make deb does)", prev.Path, p, key)
		}
		out[key] = d
	}
	var missing []string
	for _, n := range packageNames {
		for _, a := range debArches {
			if out[n+"_"+a] == nil {
				missing = append(missing, n+"_"+a)
			}
		}
	}
	if len(missing) > 0 {
		return nil, &missingError{dir: dir, missing: missing}
	}
	return out, nil
}

// readDeb reads one package through dpkg-deb.
func readDeb(path string) (*debPackage, error) {
	d := &debPackage{Path: path}
	fields, err := exec.Command("dpkg-deb", "--field", path).Output()
	if err != nil {
		return nil, fmt.Errorf("reading control of %s: %w", path, err)
	}
	if d.Control, err = parseControl(string(fields)); err != nil {
		return nil, fmt.Errorf("parsing control of %s: %w", path, err)
	}
	d.Name, d.Arch = d.Control["Package"], d.Control["Architecture"]
	if d.Files, err = readTar(path, "--fsys-tarfile", true); err != nil {
		return nil, err
	}
	if d.Ctrl, err = readTar(path, "--ctrl-tarfile", false); err != nil {
		return nil, err
	}
	return d, nil
}

// readTar reads the data (--fsys-tarfile) or control (--ctrl-tarfile)
// archive of a package. abs makes names absolute paths ("./usr/bin/x" →
// "/usr/bin/x"); otherwise they are bare ("./postinst" → "postinst").
func readTar(path, which string, abs bool) (map[string]entry, error) {
	cmd := exec.Command("dpkg-deb", which, path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-deb %s %s: %w: %s", which, path, err, stderr.String())
	}
	out := map[string]entry{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s of %s: %w", which, path, err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "."), "/")
		if !abs {
			name = strings.TrimPrefix(name, "/")
		}
		if name == "" {
			continue // the archive's root "./"
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("reading %s in %s: %w", name, path, err)
		}
		out[name] = entry{
			Name: name, Type: h.Typeflag, Mode: fs.FileMode(h.Mode).Perm(),
			Uid: h.Uid, Gid: h.Gid, Uname: h.Uname, Gname: h.Gname, Link: h.Linkname, Data: data,
		}
	}
}

// parseControl parses deb-control(5) fields: "Name: value" lines, with
// continuation lines (leading space) joined by "\n".
func parseControl(text string) (map[string]string, error) {
	fields := map[string]string{}
	last := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
		case line[0] == ' ' || line[0] == '\t':
			if last == "" {
				return nil, fmt.Errorf("continuation line before any field: %q", line)
			}
			fields[last] += "\n" + strings.TrimSpace(line)
		default:
			name, value, ok := strings.Cut(line, ":")
			if !ok {
				return nil, fmt.Errorf("not a field: %q", line)
			}
			if _, dup := fields[name]; dup {
				return nil, fmt.Errorf("field %s twice", name)
			}
			last = name
			fields[name] = strings.TrimSpace(value)
		}
	}
	return fields, sc.Err()
}

// sortedKeys returns the keys of m in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// builtVersion is the programs' version string (VERSION in package.sh),
// read from the changelog entry: "* Built from commit <hash> (<VERSION>)."
var builtVersion = regexp.MustCompile(`Built from commit \S+ \((\S+)\)\.`)

// extract writes the file at path in d to a temporary file and returns its
// name.
func extract(t *testing.T, d *debPackage, path string) string {
	t.Helper()
	e, ok := d.Files[path]
	if !ok {
		t.Fatalf("%s: no %s", d.Path, path)
	}
	f := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(f, e.Data, e.Mode|0o700); err != nil {
		t.Fatal(err)
	}
	return f
}

// hostArch is this machine's Debian architecture.
func hostArch(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(mustRun(t, nil, "dpkg", "--print-architecture"))
}
