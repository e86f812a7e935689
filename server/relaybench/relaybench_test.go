package relaybench

import (
	"context"
	"os"
	"testing"
	"time"
)

const childEnv = "WSRC_RELAYBENCH_CHILD"

// TestMain lets the test binary act as the server child.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		if err := ServeChild(os.Stdin, os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestScenarios runs each scenario at a tiny scale, so that the benchmark
// command cannot rot unnoticed. The figures are not checked: timing is the
// benchmark's business, not the tests'.
func TestScenarios(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(childEnv, "1")
	r := &Runner{Self: self}
	ctx := context.Background()

	res, err := r.ClosedLoop(ctx, 2, 100*time.Millisecond)
	if err != nil {
		t.Fatalf("closed loop: %v", err)
	}
	if res.APDUs == 0 || res.P50 <= 0 || res.Max < res.P99 || res.ServerCPU <= 0 {
		t.Errorf("closed loop result implausible: %+v", res)
	}
	res, err = r.Floor(ctx, 2, 100*time.Millisecond)
	if err != nil {
		t.Fatalf("floor: %v", err)
	}
	if res.APDUs == 0 || res.ServerCPU <= 0 {
		t.Errorf("floor result implausible: %+v", res)
	}
	res, err = r.OpenLoop(ctx, 3, 50, 100*time.Millisecond)
	if err != nil {
		t.Fatalf("open loop: %v", err)
	}
	if res.APDUs == 0 {
		t.Errorf("open loop relayed nothing: %+v", res)
	}
	if _, err := r.Idle(ctx, 5); err != nil {
		t.Fatalf("idle: %v", err)
	}
}
