//go:build !cgo

package ccid

import (
	"errors"
	"log/slog"

	"github.com/wsrc-go/wsrc/ccid/internal/usbio"
)

// newLibusbBus fails in builds without cgo: gousb needs libusb.
func newLibusbBus(*slog.Logger) (usbio.Bus, error) {
	return nil, errors.New("built without cgo: USB access through libusb is not available")
}
