package ccidsim

import (
	"context"
	"errors"
	"fmt"
)

// ErrDetached is returned by Endpoint's methods once it is closed.
var ErrDetached = errors.New("ccidsim: endpoint detached")

// NewDevice returns a simulated reader of profile p that is on no Bus:
// a transport of the caller's (a real USB gadget, in test/gadget) moves
// its messages through Attach's Endpoint. Only single-interface
// profiles can be served this way.
func NewDevice(p Profile, serial string) (*Reader, error) {
	if p.interfaces() != 1 {
		return nil, fmt.Errorf("ccidsim: %s has %d CCID interfaces; a device serves one", p.Name, p.interfaces())
	}
	return newReader(nil, p, serial, "gadget"), nil
}

// Endpoint is the device end of one attached host: what the host writes
// to bulk-out goes to Out, what the reader answers comes from In (bulk-in)
// and Interrupt (NotifySlotChange). Out, In and Interrupt may be called
// from different goroutines; each of In and Interrupt from one at a time.
type Endpoint struct {
	c *conn
}

// Attach connects a host to the reader (the USB configuration was set).
// At most one Endpoint is attached at a time; Close it before the next.
func (r *Reader) Attach() (*Endpoint, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns[0] != nil {
		return nil, errors.New("ccidsim: a host is attached already")
	}
	c := &conn{r: r, iface: 0, bulkIn: make(chan []byte, 64), intr: make(chan []byte, 16), closed: make(chan struct{})}
	r.conns[0] = c
	return &Endpoint{c: c}, nil
}

// Out hands the reader one complete PC_to_RDR message. The answer (at
// once or, for a slow card, later) comes out of In.
func (e *Endpoint) Out(msg []byte) error {
	if err := e.c.alive(); err != nil {
		return ErrDetached
	}
	e.c.r.handle(e.c, append([]byte(nil), msg...))
	return nil
}

// In returns the next RDR_to_PC message for bulk-in.
func (e *Endpoint) In(ctx context.Context) ([]byte, error) {
	select {
	case f := <-e.c.bulkIn:
		return f, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-e.c.closed:
		return nil, ErrDetached
	}
}

// Interrupt returns the next message for the interrupt-in endpoint.
func (e *Endpoint) Interrupt(ctx context.Context) ([]byte, error) {
	select {
	case f := <-e.c.intr:
		return f, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-e.c.closed:
		return nil, ErrDetached
	}
}

// Control answers a class request on the interface (GET_DATA_RATES,
// ABORT, ...): the length of the data written into data, or an error
// for a request the reader stalls.
func (e *Endpoint) Control(reqType, req uint8, value uint16, data []byte) (int, error) {
	return e.c.r.control(e.c, reqType, req, value, data)
}

// NotifyPresence queues a NotifySlotChange with every slot's presence,
// as a reader sends when a host has just configured it.
func (e *Endpoint) NotifyPresence() {
	e.c.r.notifySlots(0, nil)
}

// Close detaches the host: answers still being worked out are dropped
// and their goroutines have ended when Close returns.
func (e *Endpoint) Close() error { return e.c.Close() }

// ConfigDescriptor returns the profile's full-speed configuration
// descriptor for one interface with the given endpoint addresses
// (interrupt-in left out when the profile has none).
func (p Profile) ConfigDescriptor(bulkIn, bulkOut, intIn byte) []byte {
	return p.configWith(func(int) (byte, byte, byte) { return bulkIn, bulkOut, intIn })
}
