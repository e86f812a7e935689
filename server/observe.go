package server

import (
	"time"

	"github.com/wsrc-go/wsrc/protocol"
)

// The hooks in this file let other packages watch the relay without the
// relay knowing them: a status page and metrics (an Observer), APDU
// tracing to pcap (a Tracer). Each is one field of Config; nil means
// none. Hooks are called from the connections' goroutines, concurrently;
// they must be safe for concurrent use and quick (count or queue, never
// block on I/O), since the connection that calls them waits meanwhile.
// CardChanged is called with the card's lock held, so that each card's
// events arrive in the order of its changes: it may call Server.Stats and
// Server.Cards, nothing else of the Server.

// Port names, as Observer events and logs give them.
const (
	PortUser = roleUser
	PortCard = roleCard
)

// Observer is told about connections, cards, relayed requests and
// refusals. Embed NopObserver to implement only some of the methods;
// Observers combines several.
type Observer interface {
	// Connected: a WebSocket was accepted (after authentication).
	Connected(ConnEvent)
	// Disconnected: the connection ended, for the reason given.
	Disconnected(ev ConnEvent, reason string)
	// CardChanged: a card was listed (state init), identified (ready),
	// selected (associated), released (ready) or removed (state "").
	CardChanged(CardEvent)
	// Relayed: a user's c_apdu or reset_req was answered, or failed.
	Relayed(RequestEvent)
	// Refused: an upgrade request or a message was turned away.
	Refused(Refusal)
	// Problem: a peer broke the protocol or a connection failed (see
	// ProblemKind); the peer got an error or was closed.
	Problem(ev ConnEvent, kind ProblemKind)
}

// ProblemKind classifies problems for metrics: a closed set.
type ProblemKind string

// Problem kinds. Agents' error answers and request timeouts are Relayed
// outcomes, connection limits Refusals.
const (
	ProblemBadMessage ProblemKind = "bad_message"        // undecodable: bad JSON, unknown msg_type, bad hex...
	ProblemUnexpected ProblemKind = "unexpected_message" // valid, but not in this state (c_apdu before select_card...)
	ProblemHello      ProblemKind = "hello"              // the connection ended before or at its hello
	ProblemIdentify   ProblemKind = "identify"           // a card's identification failed (timeout, garbage, or an agent's error: the card is then usable by ATR)
	ProblemSelect     ProblemKind = "select"             // select_card found no card the user may take
	ProblemKeepalive  ProblemKind = "keepalive"          // a ping went unanswered
	ProblemWrite      ProblemKind = "write"              // a write failed or timed out (a slow peer)
	ProblemTooBig     ProblemKind = "too_big"            // a message over the size limit
	ProblemUpgrade    ProblemKind = "upgrade"            // not a valid WebSocket upgrade request (ConnEvent.ID 0)
)

// ConnEvent describes one connection.
type ConnEvent struct {
	ID     uint64 // unique for the server's lifetime
	Port   string // PortUser or PortCard
	Remote string // "ip:port"
	Name   string // the authenticated user or agent; "" when the port is open
}

// CardEvent describes a card after a change.
type CardEvent struct {
	ID         uint64 // the card connection's ConnEvent.ID
	Agent      string // the authenticated agent, else the name from hello
	Reader     string
	Identities protocol.Identities
	State      string // protocol.StateInit, StateReady, StateAssociated; "" when gone
	User       string // the associated user (name, else address); "" when none
	Remote     string // the card agent's "ip:port"
	// Lost, when State is "", says the connection was lost rather than
	// closed: the agent vanished without a close frame, stopped answering
	// (keepalive pings, a relayed request, a write), or said hello again
	// for the same agent name and reader (the old connection was stale).
	// A close by the agent, the server's shutdown and the server closing
	// the agent for breaking the protocol or its rules are not losses.
	// An agent that comes back after a loss has reconnected.
	Lost bool
}

// RequestEvent describes one relayed request.
type RequestEvent struct {
	CardID   uint64
	User     string        // the user's name, else its address
	Type     string        // protocol.TypeCAPDU or protocol.TypeResetReq
	Duration time.Duration // from the write to the card agent to the outcome
	Outcome  Outcome
}

// Outcome is how a relayed request ended.
type Outcome string

// Request outcomes.
const (
	OutcomeOK       Outcome = "ok"        // r_apdu or reset_resp relayed
	OutcomeAgentErr Outcome = "agent_err" // the agent answered error, or garbage
	OutcomeTimeout  Outcome = "timeout"   // no answer within RequestTimeout
	OutcomeGone     Outcome = "gone"      // the card connection ended first
)

// Refusal describes something turned away.
type Refusal struct {
	Port   string
	Remote string
	Name   string // the name claimed or authenticated, if any
	Reason RefusalReason
}

// RefusalReason says why.
type RefusalReason string

// Refusal reasons.
const (
	RefusedNoCredentials RefusalReason = "no_credentials"   // 401, none presented
	RefusedBadCredential RefusalReason = "bad_credentials"  // 401, wrong or malformed
	RefusedThrottled     RefusalReason = "throttled"        // 429, too many failures from the address
	RefusedPortFull      RefusalReason = "port_full"        // 503, MaxUsers/MaxCards
	RefusedAddrFull      RefusalReason = "addr_full"        // 503, MaxConnsPerAddr
	RefusedPending       RefusalReason = "pending_full"     // TCP connection closed before its request: MaxPending or MaxConnsPerAddr (ConnState)
	RefusedShuttingDown  RefusalReason = "shutting_down"    // 503
	RefusedRateLimited   RefusalReason = "rate_limited"     // a message over the rate limit (error sent)
	RefusedRateClosed    RefusalReason = "rate_closed"      // closed for persistent abuse of the rate limit
	RefusedCard          RefusalReason = "card_not_allowed" // an agent registered a card its rules exclude (also after Server.Recheck)
	RefusedDuplicate     RefusalReason = "duplicate_card"   // a card whose ICCID or EID another agent's listed card has (Server.Conflicts)
	RefusedRevoked       RefusalReason = "revoked"          // an open connection closed by Server.Recheck: credentials no longer accepted
	RefusedWithdrawn     RefusalReason = "card_withdrawn"   // a user's card taken by Server.Recheck: its rules no longer allow it
)

// NopObserver ignores everything; embed it in partial Observers.
type NopObserver struct{}

// Connected does nothing.
func (NopObserver) Connected(ConnEvent) {}

// Disconnected does nothing.
func (NopObserver) Disconnected(ConnEvent, string) {}

// CardChanged does nothing.
func (NopObserver) CardChanged(CardEvent) {}

// Relayed does nothing.
func (NopObserver) Relayed(RequestEvent) {}

// Refused does nothing.
func (NopObserver) Refused(Refusal) {}

// Problem does nothing.
func (NopObserver) Problem(ConnEvent, ProblemKind) {}

// Observers returns an Observer that calls each of obs in turn (nil
// entries skipped).
func Observers(obs ...Observer) Observer {
	var m multiObserver
	for _, o := range obs {
		if o != nil {
			m = append(m, o)
		}
	}
	switch len(m) {
	case 0:
		return NopObserver{}
	case 1:
		return m[0]
	}
	return m
}

type multiObserver []Observer

func (m multiObserver) Connected(ev ConnEvent) {
	for _, o := range m {
		o.Connected(ev)
	}
}

func (m multiObserver) Disconnected(ev ConnEvent, reason string) {
	for _, o := range m {
		o.Disconnected(ev, reason)
	}
}

func (m multiObserver) CardChanged(ev CardEvent) {
	for _, o := range m {
		o.CardChanged(ev)
	}
}

func (m multiObserver) Relayed(ev RequestEvent) {
	for _, o := range m {
		o.Relayed(ev)
	}
}

func (m multiObserver) Refused(ev Refusal) {
	for _, o := range m {
		o.Refused(ev)
	}
}

func (m multiObserver) Problem(ev ConnEvent, kind ProblemKind) {
	for _, o := range m {
		o.Problem(ev, kind)
	}
}

// Tracer receives every APDU exchange with a card: the users' relayed
// c_apdus and the server's own identification commands, and resets. It
// is called once per exchange, on the card connection's goroutine, when
// the exchange is over (answered or failed), so the relay waits for it:
// queue, do not write files from the call. The slices in APDUTrace are
// valid only during the call; copy what you keep.
type Tracer interface {
	TraceAPDU(APDUTrace)
}

// APDUTrace is one exchange with a card.
type APDUTrace struct {
	CardID     uint64        // the card connection's ConnEvent.ID
	ICCID, EID string        // the card's, when known at the time
	User       string        // who asked: the user's name or address; "" for identification
	Start      time.Time     // when the command went to the agent
	Duration   time.Duration // until the answer (or the failure)
	// Command is the command APDU; nil for a reset.
	Command []byte
	// Response is the response data without the status word; for a
	// reset, the new ATR. nil when there was no answer.
	Response []byte
	SW       uint16 // status word; 0 for a reset or without an answer
	Reset    bool   // a reset_req / reset_resp exchange
	Err      string // why there was no answer; "" when answered
}

// CardStatus is one card connection in a Snapshot.
type CardStatus struct {
	ID           uint64 // ConnEvent.ID
	Identities   protocol.Identities
	State        string // protocol.StateInit, StateReady or StateAssociated
	Agent        string // the authenticated agent, else the name from hello
	AgentVersion string // from hello; "" when not said
	Reader       string
	Remote       string    // "ip:port"
	Since        time.Time // when the connection was accepted
	APDUs        uint64    // c_apdus relayed to it
	User         uint64    // the associated user's ID; 0 when none
}

// UserStatus is one user connection in a Snapshot.
type UserStatus struct {
	ID     uint64
	Name   string // the authenticated user; "" on an open port
	Remote string
	Since  time.Time
	Card   uint64 // the selected card's ID; 0 when none
}

// Snapshot returns every card connection (in list order) and every user
// connection (in no particular order), for a status page. It takes the
// server's locks briefly; call it on demand, not per event.
func (s *Server) Snapshot() (cards []CardStatus, users []UserStatus) {
	byUser := map[uint64]uint64{}
	s.hub.mu.Lock()
	cards = make([]CardStatus, 0, len(s.hub.cards))
	for _, cc := range s.hub.cards {
		cards = append(cards, CardStatus{ID: cc.c.id, Identities: cc.id.identities(), State: cc.state, Agent: cc.agent,
			AgentVersion: cc.hello.Version, Reader: cc.hello.Reader, Remote: cc.c.addr, Since: cc.c.since,
			APDUs: cc.apdus.Load(), User: cc.userID})
		if cc.userID != 0 {
			byUser[cc.userID] = cc.c.id
		}
	}
	s.hub.mu.Unlock()
	s.mu.Lock()
	for c := range s.conns {
		if c.role == roleUser {
			users = append(users, UserStatus{ID: c.id, Name: c.name, Remote: c.addr, Since: c.since, Card: byUser[c.id]})
		}
	}
	s.mu.Unlock()
	return cards, users
}
