package deb

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// shipped is a regular file a package must contain.
type shipped struct {
	path string
	mode fs.FileMode
	src  string // the repository file it must equal, relative to the root; "" = not compared
}

// wantFiles lists every regular file of each package, nothing more.
var wantFiles = map[string][]shipped{
	"wsrc-agent": {
		{"/usr/bin/wsrc-agent", 0o755, ""},
		{"/usr/lib/systemd/system/wsrc-agent.service", 0o644, "systemd/wsrc-agent.service"},
		{"/usr/lib/sysusers.d/wsrc-agent.conf", 0o644, "systemd/wsrc.sysusers.conf"},
		{"/usr/lib/udev/rules.d/60-wsrc-agent.rules", 0o644, "systemd/60-wsrc-agent.rules"},
		{"/usr/share/polkit-1/rules.d/60-wsrc-agent.rules", 0o644, "systemd/wsrc-agent.polkit.rules"},
		{"/etc/default/wsrc-agent", 0o644, "systemd/default/wsrc-agent"},
		{"/etc/wsrc/agent.toml", 0o644, "deploy/nfpm/etc/agent.toml"},
		{"/usr/share/doc/wsrc-agent/examples/agent.toml", 0o644, "docs/examples/agent.toml"},
		{"/usr/share/doc/wsrc-agent/copyright", 0o644, "deploy/nfpm/doc/copyright"},
		{"/usr/share/doc/wsrc-agent/changelog.gz", 0o644, ""},
		{"/usr/share/lintian/overrides/wsrc-agent", 0o644, "deploy/nfpm/lintian/wsrc-agent"},
	},
	"wsrc-server": {
		{"/usr/bin/wsrc-server", 0o755, ""},
		{"/usr/lib/systemd/system/wsrc-server.service", 0o644, "systemd/wsrc-server.service"},
		{"/usr/lib/systemd/system/wsrc-server-user.socket", 0o644, "systemd/wsrc-server-user.socket"},
		{"/usr/lib/systemd/system/wsrc-server-card.socket", 0o644, "systemd/wsrc-server-card.socket"},
		{"/usr/lib/sysusers.d/wsrc-server.conf", 0o644, "systemd/wsrc.sysusers.conf"},
		{"/etc/default/wsrc-server", 0o644, "systemd/default/wsrc-server"},
		{"/etc/wsrc/server.toml", 0o644, "deploy/nfpm/etc/server.toml"},
		{"/usr/share/doc/wsrc-server/examples/server.toml", 0o644, "docs/examples/server.toml"},
		{"/usr/share/doc/wsrc-server/copyright", 0o644, "deploy/nfpm/doc/copyright"},
		{"/usr/share/doc/wsrc-server/changelog.gz", 0o644, ""},
		{"/usr/share/lintian/overrides/wsrc-server", 0o644, "deploy/nfpm/lintian/wsrc-server"},
	},
	"wsrc": {
		{"/usr/bin/wsrc", 0o755, ""},
		{"/usr/lib/systemd/system/wsrc-vpcd@.service", 0o644, "systemd/wsrc-vpcd@.service"},
		{"/usr/share/doc/wsrc/copyright", 0o644, "deploy/nfpm/doc/copyright"},
		{"/usr/share/doc/wsrc/changelog.gz", 0o644, ""},
		{"/usr/share/lintian/overrides/wsrc", 0o644, "deploy/nfpm/lintian/wsrc"},
	},
}

// wantScripts are the maintainer scripts of each package (mode 0755,
// equal to deploy/nfpm/scripts/<package>.<script>).
var wantScripts = map[string][]string{
	"wsrc-agent":  {"postinst", "prerm", "postrm"},
	"wsrc-server": {"postinst", "prerm", "postrm"},
	"wsrc":        nil,
}

// wantConffiles is the conffiles list of each package.
var wantConffiles = map[string][]string{
	"wsrc-agent":  {"/etc/default/wsrc-agent", "/etc/wsrc/agent.toml"},
	"wsrc-server": {"/etc/default/wsrc-server", "/etc/wsrc/server.toml"},
	"wsrc":        nil,
}

// TestContents checks each package's files: exactly the listed regular
// files with their modes, only directories besides (0755), everything owned
// by root, and the files that come from the repository equal to it.
func TestContents(t *testing.T) {
	for _, key := range sortedKeys(builtDebs(t)) {
		d := debs[key]
		t.Run(key, func(t *testing.T) {
			want := map[string]shipped{}
			for _, f := range wantFiles[d.Name] {
				want[f.path] = f
			}
			for _, path := range sortedKeys(d.Files) {
				e := d.Files[path]
				if e.Uid != 0 || e.Gid != 0 || (e.Uname != "" && e.Uname != "root") || (e.Gname != "" && e.Gname != "root") {
					t.Errorf("%s: owner %s:%s (%d:%d), want root:root", path, e.Uname, e.Gname, e.Uid, e.Gid)
				}
				switch e.Type {
				case tar.TypeDir:
					if e.Mode != 0o755 {
						t.Errorf("%s/: mode %o, want 755", path, e.Mode)
					}
					if !isParentOf(path, wantFiles[d.Name]) {
						t.Errorf("%s/: unexpected directory", path)
					}
				case tar.TypeReg:
					w, ok := want[path]
					if !ok {
						t.Errorf("%s: unexpected file", path)
						continue
					}
					delete(want, path)
					if e.Mode != w.mode {
						t.Errorf("%s: mode %o, want %o", path, e.Mode, w.mode)
					}
					if w.src != "" {
						src, err := os.ReadFile(filepath.Join(repoRoot, w.src))
						if err != nil {
							t.Fatal(err)
						}
						if !bytes.Equal(src, e.Data) {
							t.Errorf("%s differs from %s: stale package, run make deb", path, w.src)
						}
					}
				default:
					t.Errorf("%s: unexpected entry type %q", path, e.Type)
				}
			}
			for _, path := range sortedKeys(want) {
				t.Errorf("%s: missing", path)
			}
		})
	}
}

// isParentOf reports whether dir is an ancestor of one of files.
func isParentOf(dir string, files []shipped) bool {
	for _, f := range files {
		if strings.HasPrefix(f.path, dir+"/") {
			return true
		}
	}
	return false
}

// TestChangelog checks that the changelog names the package and its
// version and says which program version it holds.
func TestChangelog(t *testing.T) {
	for _, key := range sortedKeys(builtDebs(t)) {
		d := debs[key]
		t.Run(key, func(t *testing.T) {
			text := changelog(t, d)
			first, _, _ := strings.Cut(text, "\n")
			if want := d.Name + " (" + d.Control["Version"] + ") "; !strings.HasPrefix(first, want) {
				t.Errorf("changelog starts %q, want %q...", first, want)
			}
			if builtVersion.FindStringSubmatch(text) == nil {
				t.Errorf("changelog does not say the program version (%s):\n%s", builtVersion, text)
			}
		})
	}
}

// changelog returns the package's uncompressed changelog.
func changelog(t *testing.T, d *debPackage) string {
	t.Helper()
	e, ok := d.Files["/usr/share/doc/"+d.Name+"/changelog.gz"]
	if !ok {
		t.Fatalf("%s: no changelog", d.Path)
	}
	zr, err := gzip.NewReader(bytes.NewReader(e.Data))
	if err != nil {
		t.Fatalf("%s: changelog: %v", d.Path, err)
	}
	text, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("%s: changelog: %v", d.Path, err)
	}
	return string(text)
}

// TestMaintainerScripts checks the control archive: the maintainer
// scripts (mode 0755, equal to deploy/nfpm/scripts/) and the conffiles.
func TestMaintainerScripts(t *testing.T) {
	for _, key := range sortedKeys(builtDebs(t)) {
		d := debs[key]
		t.Run(key, func(t *testing.T) {
			want := map[string]bool{"control": true, "md5sums": true}
			if len(wantConffiles[d.Name]) > 0 {
				want["conffiles"] = true
			}
			for _, s := range wantScripts[d.Name] {
				want[s] = true
				e, ok := d.Ctrl[s]
				if !ok {
					t.Errorf("no %s", s)
					continue
				}
				if e.Mode != 0o755 {
					t.Errorf("%s: mode %o, want 755", s, e.Mode)
				}
				src, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nfpm", "scripts", d.Name+"."+s))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(src, e.Data) {
					t.Errorf("%s differs from deploy/nfpm/scripts/%s.%s: stale package, run make deb", s, d.Name, s)
				}
			}
			for _, name := range sortedKeys(d.Ctrl) {
				if !want[name] {
					t.Errorf("unexpected control member %s", name)
				}
			}
			got := strings.Fields(string(d.Ctrl["conffiles"].Data))
			slices.Sort(got)
			if !slices.Equal(got, wantConffiles[d.Name]) {
				t.Errorf("conffiles %q, want %q", got, wantConffiles[d.Name])
			}
			for _, c := range got {
				if _, ok := d.Files[c]; !ok {
					t.Errorf("conffile %s is not in the package", c)
				}
			}
		})
	}
}

// TestNoSharedFiles checks that no two packages of one architecture ship
// the same file: dpkg refuses to install the second.
func TestNoSharedFiles(t *testing.T) {
	all := builtDebs(t)
	for _, arch := range debArches {
		owner := map[string]string{}
		for _, n := range packageNames {
			d := all[n+"_"+arch]
			for path, e := range d.Files {
				if e.Type == tar.TypeDir {
					continue
				}
				if o, ok := owner[path]; ok {
					t.Errorf("%s: %s is in %s and %s", arch, path, o, n)
				}
				owner[path] = n
			}
		}
	}
}
