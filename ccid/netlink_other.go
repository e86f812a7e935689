//go:build !linux

package ccid

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// watchUevents is Linux-only; elsewhere the driver rescans periodically.
func watchUevents(context.Context, chan<- struct{}, *slog.Logger) error {
	return fmt.Errorf("hotplug events: %w on this OS", usbio.ErrUnsupported)
}
