package main

import (
	"bytes"
	"io"
	"sync"

	"github.com/wsrc-go/wsrc/internal/testenv/qemuvm/vmscript"
)

// console writes marker lines, one whole line per write, so that lines of
// concurrent processes never mix.
type console struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func newConsole(w io.Writer) *console { return &console{w: w} }

func (c *console) event(kind vmscript.Kind, name, text string) {
	line := vmscript.Line(kind, name, text) + "\n"
	c.mu.Lock()
	defer c.mu.Unlock()
	io.WriteString(c.w, line) // nowhere to report a console error
}

// lineWriter turns a process's output into out events, one per line. It
// is an io.Writer for exec.Cmd's Stdout and Stderr at once.
type lineWriter struct {
	con  *console
	name string

	mu  sync.Mutex // guards buf
	buf []byte     // an unfinished line
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.con.event(vmscript.KindOut, w.name, string(bytes.TrimRight(w.buf[:i], "\r")))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64*1024 { // a runaway line: print it in pieces
		w.con.event(vmscript.KindOut, w.name, string(w.buf))
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

// flush prints an unfinished last line.
func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.con.event(vmscript.KindOut, w.name, string(w.buf))
		w.buf = nil
	}
}
