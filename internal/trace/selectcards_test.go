package trace

import "testing"

func TestSelectCards(t *testing.T) {
	if SelectCards(nil) != nil || SelectCards([]string{"", " "}) != nil {
		t.Fatal("no entries must select every card (nil)")
	}
	sel := SelectCards([]string{"card-7", "8949440000001155314F", eid2[:10] + "ABCDEF" + eid2[16:]})
	tests := []struct {
		id, iccid, eid string
		want           bool
	}{
		{"card-7", "", "", true},
		{"CARD-7", "", "", false},
		{"x", iccid1, "", true},
		{"x", iccid1 + "f", "", true},
		{"x", "8949440000001155315", "", false},
		{"x", "", eid2[:10] + "abcdef" + eid2[16:], true},
		{"x", "", eid2, false},
		{"x", "", "", false},
	}
	for _, tt := range tests {
		if got := sel(tt.id, tt.iccid, tt.eid); got != tt.want {
			t.Errorf("sel(%q, %q, %q) = %v, want %v", tt.id, tt.iccid, tt.eid, got, tt.want)
		}
	}
}
