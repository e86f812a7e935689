package status

import (
	"reflect"
	"testing"
	"time"
)

func TestAgentsFromCards(t *testing.T) {
	card := func(id uint64, agent, version, reader, addr string, age time.Duration) Card {
		return Card{ID: id, Agent: agent, AgentVersion: version, Reader: reader, RemoteAddr: addr, ConnectedSince: t0.Add(-age)}
	}
	tests := []struct {
		name  string
		cards []Card
		want  []Agent
	}{
		{"none", nil, []Agent{}},
		{
			"one agent, two readers, version of the newest connection",
			[]Card{
				card(1, "pi", "v2", "R2", "10.0.0.1:1", time.Minute),
				card(2, "pi", "v1", "R1", "10.0.0.1:2", time.Hour),
				card(3, "pi", "v3", "R1", "10.0.0.1:3", time.Second), // same reader, other slot name-wise
			},
			[]Agent{{Name: "pi", Version: "v3", Host: "10.0.0.1", Cards: []uint64{1, 2, 3}, Readers: []string{"R1", "R2"}, ConnectedSince: t0.Add(-time.Hour)}},
		},
		{
			"same name on two hosts, unnamed agents by address, IPv6",
			[]Card{
				card(1, "pi", "", "", "10.0.0.1:1", 0),
				card(2, "pi", "", "", "10.0.0.2:1", 0),
				card(3, "", "", "", "[2001:db8::1]:7", 0),
				card(4, "", "", "", "[2001:db8::1]:8", 0),
				card(5, "", "", "", "garbage", 0),
			},
			[]Agent{
				{Name: "pi", Host: "10.0.0.1", Cards: []uint64{1}, Readers: []string{}, ConnectedSince: t0},
				{Name: "pi", Host: "10.0.0.2", Cards: []uint64{2}, Readers: []string{}, ConnectedSince: t0},
				{Host: "2001:db8::1", Cards: []uint64{3, 4}, Readers: []string{}, ConnectedSince: t0},
				{Host: "garbage", Cards: []uint64{5}, Readers: []string{}, ConnectedSince: t0},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := AgentsFromCards(tt.cards); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestSourceAgentsKept checks that agents a Source gives are served as
// given, not derived.
func TestSourceAgentsKept(t *testing.T) {
	s := fixture()
	s.Agents = []Agent{{Name: "given"}}
	h := newHandler(Options{Source: SourceFunc(func() Snapshot { return s })}, func() time.Time { return t0 })
	got := h.snapshot()
	if len(got.Agents) != 1 || got.Agents[0].Name != "given" || got.Agents[0].Cards == nil || got.Agents[0].Readers == nil {
		t.Errorf("agents %+v", got.Agents)
	}
}

// TestSnapshotUTC checks that times are served in UTC whatever zone the
// Source used.
func TestSnapshotUTC(t *testing.T) {
	zone := time.FixedZone("X", 3600)
	src := SourceFunc(func() Snapshot {
		return Snapshot{
			Started: t0.In(zone),
			Cards:   []Card{{ConnectedSince: t0.In(zone)}},
			Users:   []User{{ConnectedSince: t0.In(zone)}},
		}
	})
	h := newHandler(Options{Source: src}, func() time.Time { return t0.In(zone) })
	s := h.snapshot()
	for _, tm := range []time.Time{s.Time, s.Started, s.Cards[0].ConnectedSince, s.Users[0].ConnectedSince, s.Agents[0].ConnectedSince} {
		if tm.Location() != time.UTC {
			t.Errorf("%v is not UTC", tm)
		}
	}
}
