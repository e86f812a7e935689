// Package ccid is the direct USB CCID driver: it finds smart card readers
// (USB class 0x0B, plus the vendor-class readers libccid allow-lists),
// claims them, and turns each card slot into a card.Card without pcscd.
//
// This file set is being built up in layers; see docs/ccid.md.
package ccid
