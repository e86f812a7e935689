package trace_test

import (
	"log/slog"
	"os"
	"time"

	"github.com/wsrc-go/wsrc/internal/trace"
)

// A tracer with only the log sink: the VERIFY's PIN comes out as FF.
func Example() {
	noTime := func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	tr, err := trace.New(trace.Options{
		Log:    slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{ReplaceAttr: noTime})),
		Select: trace.SelectCards([]string{"8949440000001155314"}),
	})
	if err != nil {
		panic(err)
	}
	tr.APDU(trace.Event{
		CardID:   "card-1",
		ICCID:    "8949440000001155314",
		Command:  []byte{0x00, 0x20, 0x00, 0x01, 0x04, '1', '2', '3', '4'},
		SW:       0x9000,
		Duration: 2 * time.Millisecond,
	})
	tr.Close()
	// Output:
	// level=INFO msg=apdu card=card-1 iccid=8949440000001155314 cmd=0020000104ffffffff rsp="" sw=9000 dur=2ms redacted=cmd
}
