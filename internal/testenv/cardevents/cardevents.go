// Package cardevents lets a test wait for a change of a relay's cards
// instead of polling: Changes is a server.Observer that wakes its
// waiters at every CardChanged event (a card connected, changed state or
// left).
//
//	var ch cardevents.Changes // server.Config{Observer: &ch}
//	for {
//		next := ch.Next() // before looking: no change is missed
//		if ok(srv.Cards()) {
//			break
//		}
//		<-next // (with a timeout)
//	}
package cardevents

import (
	"sync"

	"github.com/wsrc-go/wsrc/server"
)

// Changes is a server.Observer; its zero value is ready to use.
type Changes struct {
	server.NopObserver
	mu      sync.Mutex
	changed chan struct{} // closed and replaced at every change
}

// Next returns a channel that is closed at the next change.
func (c *Changes) Next() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.changed == nil {
		c.changed = make(chan struct{})
	}
	return c.changed
}

// CardChanged implements server.Observer.
func (c *Changes) CardChanged(server.CardEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}
