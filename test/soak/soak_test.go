// Package soak holds the relay's soak test (`make soak`): wsrc-server's
// relay, in a child process, churns through 10,000 user and 2,000 card
// connections and holds 5,000 idle cards, and the test reports what is
// left per ended connection (heap, goroutines, file descriptors: all
// should be about 0), what an idle card costs, how list_cards does at
// 5,000 cards, what the failed-login throttle does with 100 concurrent
// attempts, and what happens to connections that never upgrade. Its
// figures go to docs/reliability.md.
//
// It runs only with WSRC_SOAK=1 (`make soak`: about 40 s on two cores);
// a plain `go test ./...` skips it.
package soak

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/client"
	"github.com/wsrc-go/wsrc/protocol"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "soak child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Sizes of the run.
const (
	churnUsers = 10000
	churnCards = 2000
	idleCards  = 5000
	workers    = 32
	attempts   = 100 // concurrent wrong passwords
	pendingN   = 1100
)

// child is the server process.
type child struct {
	cmd        *exec.Cmd
	in         io.WriteCloser
	out        *bufio.Scanner
	user, card string // "127.0.0.1:port"
}

func startChild(t *testing.T) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	t.Cleanup(func() {
		in.Close()
		cmd.Wait() //nolint:errcheck // it exits at EOF
	})
	if !c.out.Scan() {
		t.Fatal("the server child said nothing")
	}
	var up, cp int
	if _, err := fmt.Sscanf(c.out.Text(), "ports %d %d", &up, &cp); err != nil {
		t.Fatalf("server child: %q: %v", c.out.Text(), err)
	}
	c.user, c.card = fmt.Sprintf("127.0.0.1:%d", up), fmt.Sprintf("127.0.0.1:%d", cp)
	return c
}

// ask sends a command and reads the child's stats.
func (c *child) ask(t *testing.T, cmd string) serverStats {
	t.Helper()
	if _, err := fmt.Fprintln(c.in, cmd); err != nil {
		t.Fatal(err)
	}
	if !c.out.Scan() {
		t.Fatalf("server child: no answer to %q", cmd)
	}
	var s serverStats
	if err := json.Unmarshal(c.out.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// report collects the figures and prints them as a Markdown table.
type report struct{ rows [][2]string }

func (r *report) add(what, format string, args ...any) {
	r.rows = append(r.rows, [2]string{what, fmt.Sprintf(format, args...)})
}

func (r *report) String() string {
	var b strings.Builder
	b.WriteString("| what | figure |\n|---|---|\n")
	for _, row := range r.rows {
		fmt.Fprintf(&b, "| %s | %s |\n", row[0], row[1])
	}
	return b.String()
}

func TestSoak(t *testing.T) {
	if os.Getenv("WSRC_SOAK") != "1" {
		t.Skip("the soak runs with WSRC_SOAK=1 (make soak, about 40 s)")
	}
	srv := startChild(t)
	rep := &report{}
	ctx := t.Context()

	// Warm up (pools, maps, the first allocations), then the baseline.
	churn(t, ctx, srv, 200, 20)
	base := srv.ask(t, "wait 0")

	// 1. Churn: users (hello, list_cards, close, as `wsrc list`) and card
	// agents (hello, identification, close); half of each drop their TCP
	// connection instead of closing.
	start := time.Now()
	churn(t, ctx, srv, churnUsers, churnCards)
	churned := srv.ask(t, "wait 0")
	ended := churnUsers + churnCards
	rep.add("churn", "%d user + %d card connections ended in %.1f s", churnUsers, churnCards, time.Since(start).Seconds())
	rep.add("heap left per ended connection", "%.1f bytes (%+d bytes in all)",
		float64(int64(churned.HeapAlloc)-int64(base.HeapAlloc))/float64(ended), int64(churned.HeapAlloc)-int64(base.HeapAlloc))
	rep.add("goroutines left per ended connection", "%.4f (%d → %d)", float64(churned.Goroutines-base.Goroutines)/float64(ended), base.Goroutines, churned.Goroutines)
	rep.add("file descriptors left per ended connection", "%.4f (%d → %d)", float64(churned.FDs-base.FDs)/float64(ended), base.FDs, churned.FDs)
	if per := float64(int64(churned.HeapAlloc)-int64(base.HeapAlloc)) / float64(ended); per > 100 {
		t.Errorf("%.0f bytes of heap left per ended connection", per)
	}
	if churned.Goroutines > base.Goroutines+5 || churned.FDs > base.FDs+5 {
		t.Errorf("goroutines %d → %d, fds %d → %d after the churn", base.Goroutines, churned.Goroutines, base.FDs, churned.FDs)
	}

	// 2. Hold 5,000 identified, idle card connections.
	start = time.Now()
	fleet := startFleet(t, ctx, srv.card, idleCards)
	t.Cleanup(fleet.close)
	idle := srv.ask(t, "stats")
	if idle.Cards != idleCards {
		t.Fatalf("%d cards listed, want %d", idle.Cards, idleCards)
	}
	rep.add("idle cards", "%d identified in %.1f s", idleCards, time.Since(start).Seconds())
	rep.add("heap per idle card connection", "%.0f bytes", float64(idle.HeapAlloc-churned.HeapAlloc)/idleCards)
	rep.add("goroutines per idle card connection", "%.2f", float64(idle.Goroutines-churned.Goroutines)/idleCards)
	rep.add("file descriptors per idle card connection", "%.2f", float64(idle.FDs-churned.FDs)/idleCards)

	// 3. list_cards at 5,000 cards: the whole list, and a filtered one.
	listFigures(t, ctx, srv, rep)

	// 4. 100 wrong passwords at once from one address.
	throttleFigures(t, ctx, srv, rep)

	// 5. Connections that never upgrade.
	pendingFigures(t, srv, rep)

	// 6. The fleet leaves; nothing may stay behind. The runtime keeps
	// the descriptors of its peak number of goroutines for reuse (a few
	// hundred bytes each), so a second fleet of the same size, which
	// reuses them, shows what is really left per connection.
	fleet.close()
	left := srv.ask(t, "wait 0")
	rep.add("after the idle cards left", "heap %+d bytes (the runtime's goroutine descriptors of the peak, kept for reuse), goroutines %d, fds %d (baseline %d, %d)",
		int64(left.HeapAlloc)-int64(churned.HeapAlloc), left.Goroutines, left.FDs, base.Goroutines, base.FDs)
	startFleet(t, ctx, srv.card, idleCards).close()
	final := srv.ask(t, "wait 0")
	rep.add("a second fleet of 5,000 connected and left", "heap left per ended connection %.1f bytes (%+d in all), goroutines %d, fds %d",
		float64(int64(final.HeapAlloc)-int64(left.HeapAlloc))/idleCards, int64(final.HeapAlloc)-int64(left.HeapAlloc), final.Goroutines, final.FDs)
	if final.Goroutines > base.Goroutines+5 || final.FDs > base.FDs+5 || final.PendingUsers+final.PendingCards != 0 {
		t.Errorf("after the fleets left: %+v (baseline %+v)", final, base)
	}
	if per := float64(int64(final.HeapAlloc)-int64(left.HeapAlloc)) / idleCards; per > 100 {
		t.Errorf("%.0f bytes of heap left per ended card connection", per)
	}
	fmt.Printf("\nSoak report (%s, %d CPUs):\n\n%s\n", time.Now().UTC().Format("2006-01-02"), nproc(), rep)
}

// churn runs users user and cards card connections, workers at a time.
func churn(t *testing.T, ctx context.Context, srv *child, users, cards int) {
	t.Helper()
	jobs := make(chan int)
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				var err error
				if i < users {
					err = userOnce(ctx, srv.user, i%2 == 1)
				} else {
					err = cardOnce(ctx, srv.card, i, i%2 == 1)
				}
				if err != nil && failed.Add(1) <= 5 {
					t.Errorf("connection %d: %v", i, err)
				}
			}
		})
	}
	for i := range users + cards {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
}

// userOnce is one `wsrc list`: hello, list_cards, close (or drop).
func userOnce(ctx context.Context, addr string, drop bool) error {
	h := http.Header{"Authorization": {"Bearer " + userToken}}
	var tcp net.Conn
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var err error
		tcp, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return tcp, err
	}
	c, err := client.Dial(ctx, "ws://"+addr+"/", client.WithHeader(h), client.WithNetDialContext(dial))
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.ListCards(ctx); err != nil {
		return err
	}
	if drop {
		tcp.Close() // no close frame: the TCP connection just ends
	}
	return nil
}

// cardAgent is a card agent connection that answers identification as
// a UICC with an ICCID and no ISD-R does, then idles, answering pings.
type cardAgent struct {
	ws    *websocket.Conn
	ready chan struct{}
	done  chan struct{}
}

// dialCard connects card agent n and says hello.
func dialCard(ctx context.Context, addr string, n int) (*cardAgent, error) {
	ws, _, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+addr+"/", nil)
	if err != nil {
		return nil, err
	}
	hello := protocol.Hello{ClientType: protocol.ClientCard, ATR: []byte{0x3b, 0x9f, 0x96, 0x80, 0x1f, 0xc7, 0x80, 0x31, 0xe0, 0x73, 0xfe, 0x21, 0x1b},
		Agent: fmt.Sprintf("soak-pi-%d", n/8), Reader: fmt.Sprintf("sysmocom sysmoOCTSIM [CCID] (%d) 00 %02d", n, n%8)}
	if err := ws.WriteMessage(websocket.TextMessage, protocol.Encode(hello)); err != nil {
		ws.Close()
		return nil, err
	}
	a := &cardAgent{ws: ws, ready: make(chan struct{}), done: make(chan struct{})}
	iccid, _ := card.EncodeICCID(fmt.Sprintf("8949%015d", n))
	go a.serve(iccid)
	return a, nil
}

// serve answers the server until the connection ends.
func (a *cardAgent) serve(efICCID []byte) {
	defer close(a.done)
	readyOnce := sync.OnceFunc(func() { close(a.ready) })
	for {
		_, data, err := a.ws.ReadMessage()
		if err != nil {
			return
		}
		m, err := protocol.Decode(data)
		if err != nil {
			continue
		}
		var reply protocol.Message
		switch m := m.(type) {
		case protocol.CAPDU:
			reply = answer(m.Command, efICCID)
		case protocol.StateNotification:
			if m.NewState == protocol.StateReady {
				readyOnce()
			}
		}
		if reply != nil && a.ws.WriteMessage(websocket.TextMessage, protocol.Encode(reply)) != nil {
			return
		}
	}
}

// answer is a UICC without ISD-R whose EF.ICCID holds efICCID.
func answer(cmd, efICCID []byte) protocol.RAPDU {
	switch h := hex.EncodeToString(cmd); {
	case h == "00a40000023f00", h == "00a40000022fe2":
		return protocol.RAPDU{Response: []byte{}, SW: 0x9000}
	case strings.HasPrefix(h, "00b00000"):
		return protocol.RAPDU{Response: efICCID, SW: 0x9000}
	}
	return protocol.RAPDU{Response: []byte{}, SW: 0x6a82}
}

// cardOnce connects card agent n, waits until it is ready, then closes
// (or drops) the connection.
func cardOnce(ctx context.Context, addr string, n int, drop bool) error {
	a, err := dialCard(ctx, addr, n)
	if err != nil {
		return err
	}
	select {
	case <-a.ready:
	case <-a.done:
		return fmt.Errorf("card %d: the connection ended before the card was ready", n)
	}
	if !drop {
		a.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second)) //nolint:errcheck
	}
	a.ws.Close()
	<-a.done
	return nil
}

// fleet is the idle cards.
type fleet []*cardAgent

func startFleet(t *testing.T, ctx context.Context, addr string, n int) fleet {
	t.Helper()
	f := make(fleet, n)
	var wg sync.WaitGroup
	var failed atomic.Int32
	jobs := make(chan int)
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				a, err := dialCard(ctx, addr, i)
				if err == nil {
					select {
					case <-a.ready:
					case <-a.done:
						err = fmt.Errorf("ended before ready")
					}
				}
				if err != nil {
					if failed.Add(1) <= 5 {
						t.Errorf("idle card %d: %v", i, err)
					}
					continue
				}
				f[i] = a
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return f
}

// close ends every card's connection (once: later calls find none).
func (f fleet) close() {
	for i, a := range f {
		if a != nil {
			a.ws.Close()
			<-a.done
			f[i] = nil
		}
	}
}

// listFigures times list_cards at 5,000 cards, whole and filtered.
func listFigures(t *testing.T, ctx context.Context, srv *child, rep *report) {
	t.Helper()
	h := http.Header{"Authorization": {"Bearer " + userToken}}
	ws, _, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+srv.user+"/", h)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.SetReadLimit(client.DefaultReadLimit)
	exchange := func(m protocol.Message) (int, time.Duration) {
		start := time.Now()
		if err := ws.WriteMessage(websocket.TextMessage, protocol.Encode(m)); err != nil {
			t.Fatal(err)
		}
		_, data, err := ws.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		return len(data), time.Since(start)
	}
	exchange(protocol.Hello{ClientType: protocol.ClientUser})
	median := func(m protocol.Message) (int, time.Duration) {
		var size int
		var ds []time.Duration
		for range 21 {
			n, d := exchange(m)
			size, ds = n, append(ds, d)
		}
		slices.Sort(ds)
		return size, ds[len(ds)/2]
	}
	size, d := median(protocol.ListCards{})
	rep.add("list_cards at 5,000 cards", "%d bytes (%.0f per card), %.1f ms (median of 21, one user)", size, float64(size)/idleCards, float64(d)/1e6)
	size, d = median(protocol.ListCards{Agent: "soak-pi-42"})
	rep.add("list_cards filtered by agent (8 of 5,000)", "%d bytes, %.2f ms", size, float64(d)/1e6)
	size, d = median(protocol.ListCards{Limit: 100})
	rep.add("list_cards with limit 100", "%d bytes, %.2f ms", size, float64(d)/1e6)
	// The Go client (wsrc list) takes the whole list.
	c, err := client.Dial(ctx, "ws://"+srv.user+"/", client.WithHeader(h))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cards, err := c.ListCards(ctx)
	if err != nil || len(cards) != idleCards {
		t.Fatalf("the Go client listed %d cards: %v", len(cards), err)
	}
	rep.add("Go client (wsrc list) at 5,000 cards", "%d cards listed", len(cards))
}

// throttleFigures sends 100 wrong passwords at once from one address.
func throttleFigures(t *testing.T, ctx context.Context, srv *child, rep *report) {
	t.Helper()
	codes := make(chan int, attempts)
	authz := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:a wrong guess"))
	start := time.Now()
	var wg sync.WaitGroup
	for range attempts {
		wg.Go(func() {
			_, resp, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+srv.user+"/", http.Header{"Authorization": {authz}})
			switch {
			case resp != nil:
				codes <- resp.StatusCode
			case err != nil:
				codes <- 0
			}
		})
	}
	wg.Wait()
	close(codes)
	n := map[int]int{}
	for c := range codes {
		n[c]++
	}
	rep.add("100 concurrent wrong passwords, one address", "%d × 401 (checked), %d × 429 (refused unchecked), %d other, in %.2f s",
		n[http.StatusUnauthorized], n[http.StatusTooManyRequests], attempts-n[http.StatusUnauthorized]-n[http.StatusTooManyRequests], time.Since(start).Seconds())
	if n[http.StatusUnauthorized] > 10 {
		t.Errorf("%d wrong passwords checked, want at most 10", n[http.StatusUnauthorized])
	}
}

// pendingFigures opens connections that send a complete request that is
// not an upgrade and then stay: more than the port takes (max_pending)
// are closed at once, the others after the header timeout.
func pendingFigures(t *testing.T, srv *child, rep *report) {
	t.Helper()
	type result struct {
		answered bool // got an HTTP answer before the close
		life     time.Duration
	}
	results := make(chan result, pendingN)
	start := time.Now()
	var wg sync.WaitGroup
	for range pendingN {
		c, err := net.Dial("tcp", srv.user)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer c.Close()
			opened := time.Now()
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: soak\r\n\r\n") //nolint:errcheck // a closed one fails here
			c.SetReadDeadline(time.Now().Add(3 * headerTimeout))
			data, _ := io.ReadAll(c)
			results <- result{answered: len(data) > 0, life: time.Since(opened)}
		})
	}
	wg.Wait()
	close(results)
	var atOnce, timedOut int
	var longest time.Duration
	for r := range results {
		if r.answered {
			timedOut++
		} else {
			atOnce++
		}
		longest = max(longest, r.life)
	}
	rep.add("connections that never upgrade", "%d opened: %d answered (401) then closed at the header timeout, %d closed at once (max_pending 1024); longest lived %.1f s (header_timeout %v); all gone after %.1f s",
		pendingN, timedOut, atOnce, longest.Seconds(), headerTimeout, time.Since(start).Seconds())
	if longest > headerTimeout+5*time.Second {
		t.Errorf("a connection that never upgraded lived %v", longest)
	}
	if st := srv.ask(t, "stats"); st.PendingUsers != 0 {
		t.Errorf("%d connections still pending", st.PendingUsers)
	}
}

func nproc() int {
	data, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(data), "\nprocessor") + 1
}
