package status

import (
	"net"
	"slices"
	"time"
)

// Source is what the status handler shows: the relay implements it.
// Snapshot must be safe for concurrent use, return a copy that the
// caller may keep, and be quick (it is called for every status request
// and page refresh).
type Source interface {
	Snapshot() Snapshot
}

// SourceFunc adapts a function to Source.
type SourceFunc func() Snapshot

// Snapshot calls f.
func (f SourceFunc) Snapshot() Snapshot { return f() }

// Snapshot is the state of the relay at one moment, as GET /api/v1/status
// returns it. The JSON field names are a stable interface (scripts and
// the page use them): fields may be added, never renamed or removed.
// Lists are never null in JSON; an empty list is [].
type Snapshot struct {
	// Version is the server's version. Left empty by a Source, the
	// handler fills in internal/version.Version.
	Version string `json:"version"`
	// Time is the server's clock when the snapshot was served (set by
	// the handler). Clients compute ages from it, not from their own
	// clock.
	Time time.Time `json:"time"`
	// Started is when the server started. Left zero by a Source, the
	// handler uses the time it was created.
	Started time.Time `json:"started"`
	// UptimeSeconds is Time - Started in whole seconds (set by the
	// handler).
	UptimeSeconds int64 `json:"uptime_seconds"`
	// Agents are the card agents, one per agent name and network
	// address. Left nil by a Source, the handler derives them from
	// Cards (see AgentsFromCards).
	Agents []Agent `json:"agents"`
	// Cards are the card connections, in the Source's order (the
	// relay's: connection order).
	Cards []Card `json:"cards"`
	// Users are the user connections, in the Source's order.
	Users []User `json:"users"`
	// Conflicts are the most recent cards refused because another
	// agent's listed card had the same ICCID or EID, newest first (an
	// impostor, a cloned card, or two agents sharing a token). Never
	// null.
	Conflicts []Conflict `json:"conflicts"`
}

// Conflict is a card refused as a duplicate of a listed card.
type Conflict struct {
	Time     time.Time `json:"time"`
	Identity string    `json:"identity"` // "ICCID" or "EID"
	Value    string    `json:"value"`
	// Agent, Reader and RemoteAddr are the refused card's.
	Agent      string `json:"agent"`
	Reader     string `json:"reader"`
	RemoteAddr string `json:"remote_addr"`
	// ListedAgent and ListedRemoteAddr are those of the card listed
	// with that identity.
	ListedAgent      string `json:"listed_agent"`
	ListedRemoteAddr string `json:"listed_remote_addr"`
}

// Card states, as in the WSRC protocol (package protocol).
const (
	StateInit       = "init"       // connected, being identified
	StateReady      = "ready"      // identified, free to be selected
	StateAssociated = "associated" // selected by a user
)

// Card is one card agent connection: one card in one reader.
type Card struct {
	// ID identifies the connection for the server's lifetime (never
	// reused); users refer to it.
	ID uint64 `json:"id"`
	// Identities maps identity keys (ATR, EID, ICCID, IMSI) to values,
	// as list_cards_ack shows them. Never null.
	Identities map[string]string `json:"identities"`
	// State is StateInit, StateReady or StateAssociated.
	State string `json:"state"`
	// Agent, AgentVersion and Reader are what the card agent said in
	// its hello (extensions: "" when not said).
	Agent        string `json:"agent"`
	AgentVersion string `json:"agent_version"`
	Reader       string `json:"reader"`
	// RemoteAddr is the agent's network address, "ip:port" ("[ip]:port"
	// for IPv6).
	RemoteAddr string `json:"remote_addr"`
	// ConnectedSince is when the connection was accepted.
	ConnectedSince time.Time `json:"connected_since"`
	// APDUs counts the command APDUs relayed to this card.
	APDUs uint64 `json:"apdus"`
	// User is the ID of the associated user; null when none.
	User *uint64 `json:"user"`
}

// User is one user connection.
type User struct {
	// ID identifies the connection for the server's lifetime.
	ID uint64 `json:"id"`
	// Name is the authenticated user's name; "" on a user port without
	// accounts.
	Name string `json:"name"`
	// RemoteAddr is the user's network address, "ip:port".
	RemoteAddr string `json:"remote_addr"`
	// ConnectedSince is when the connection was accepted.
	ConnectedSince time.Time `json:"connected_since"`
	// Card is the ID of the selected card; null when none.
	Card *uint64 `json:"card"`
}

// Agent is one card agent: the card connections that share an agent name
// (from hello) and an IP address. A wsrc-agent opens one connection per
// card; pySim's card client names no agent, so its cards group by address.
type Agent struct {
	// Name is the agent's name from hello; "" when not said.
	Name string `json:"name"`
	// Version is the agent's software version from hello, as its most
	// recently connected card said it ("" when not said).
	Version string `json:"version"`
	// Host is the agent's IP address (without port).
	Host string `json:"host"`
	// Cards lists the IDs of its card connections.
	Cards []uint64 `json:"cards"`
	// Readers lists the reader names its cards are in, sorted, without
	// duplicates or empty names.
	Readers []string `json:"readers"`
	// ConnectedSince is when its oldest card connection was accepted.
	ConnectedSince time.Time `json:"connected_since"`
}

// AgentsFromCards groups cards into agents by agent name and IP address,
// in the order each agent's first card appears.
func AgentsFromCards(cards []Card) []Agent {
	type key struct{ name, host string }
	index := make(map[key]int)
	agents := []Agent{}
	newest := []time.Time{} // per agent: when the card that gave Version connected
	for _, c := range cards {
		k := key{c.Agent, hostOf(c.RemoteAddr)}
		i, ok := index[k]
		if !ok {
			i = len(agents)
			index[k] = i
			agents = append(agents, Agent{Name: k.name, Host: k.host, Version: c.AgentVersion,
				Cards: []uint64{}, Readers: []string{}, ConnectedSince: c.ConnectedSince})
			newest = append(newest, c.ConnectedSince)
		}
		a := &agents[i]
		a.Cards = append(a.Cards, c.ID)
		if c.Reader != "" && !slices.Contains(a.Readers, c.Reader) {
			a.Readers = append(a.Readers, c.Reader)
		}
		if c.ConnectedSince.After(newest[i]) {
			a.Version, newest[i] = c.AgentVersion, c.ConnectedSince
		}
		if c.ConnectedSince.Before(a.ConnectedSince) {
			a.ConnectedSince = c.ConnectedSince
		}
	}
	for i := range agents {
		slices.Sort(agents[i].Readers)
	}
	return agents
}

// hostOf returns the host part of an "ip:port" address; the whole string
// when it has no port.
func hostOf(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}
