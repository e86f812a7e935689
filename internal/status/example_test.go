package status_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/wsrc-go/wsrc/internal/status"
)

// The relay implements Source and reports events to Metrics; the
// command serves the handler on a listener of its own.
func ExampleNewHandler() {
	metrics := status.NewMetrics()
	relay := status.SourceFunc(func() status.Snapshot { // the relay's Snapshot method
		return status.Snapshot{Cards: []status.Card{{ID: 1, State: status.StateReady, Agent: "pi"}}}
	})
	h := status.NewHandler(status.Options{Source: relay, Metrics: metrics})

	// As the relay would, on its events:
	metrics.ConnOpened(status.RoleCard)
	metrics.APDURelayed(1500 * time.Microsecond)

	for _, path := range []string{status.PathHealthz, status.PathReadyz} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		fmt.Printf("%s: %d %s", path, rec.Code, rec.Body)
	}
	// Output:
	// /healthz: 200 ok
	// /readyz: 200 ready
}
