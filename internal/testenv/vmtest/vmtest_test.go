package vmtest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestModuleRoot(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	// This package is internal/testenv/vmtest under the module root, and
	// fetch-kernel.sh is where Need runs it from.
	wd, _ := os.Getwd()
	if want := filepath.Dir(filepath.Dir(filepath.Dir(wd))); root != want {
		t.Errorf("moduleRoot() = %s, want %s", root, want)
	}
	if _, err := os.Stat(filepath.Join(root, "scripts", "fetch-kernel.sh")); err != nil {
		t.Error(err)
	}
}
