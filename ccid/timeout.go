package ccid

import (
	"time"

	"github.com/wsrc-go/wsrc/card/atr"
)

// Command timeouts. Variables so tests can shorten them.
var (
	// defaultTimeout applies before the ATR is known (libccid's
	// DEFAULT_COM_READ_TIMEOUT) and is the floor of computed timeouts.
	defaultTimeout = 3 * time.Second
	// powerOnTimeout bounds IccPowerOn. The reader itself reports a mute
	// card long before: ISO 7816-3 allows an ATR to take at most about
	// 20 000 etu of 372 clocks, 2 s at 3.5 MHz.
	powerOnTimeout = 10 * time.Second
	// nonISOTimeout applies to cards whose ATR gives no usable Fi/Di
	// (libccid: 60 s).
	nonISOTimeout = 60 * time.Second
	// t1Slack is added to T=1 timeouts so the reader's own error
	// arrives before the host gives up (libccid adds 1 s).
	t1Slack = time.Second
)

// ms converts milliseconds (float) to a Duration.
func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

// t0Timeout is the longest a T=0 TPDU exchange may take (libccid
// T0_card_timeout; ISO 7816-3 §7.2 and §10.2): the larger of
// "ISO in" (5-byte header, procedure byte, 256 data bytes, SW:
// 261 EGT + 6 WWT) and "ISO out" (header, then procedure byte, 256 data
// bytes and SW from the card: 5 EGT + 260 WWT), at least defaultTimeout.
// fi and di are the values (not indices) of the parameters in use, n
// the extra guard time TC1, wi the waiting integer TC2, clock the card
// clock in kHz (so the results are in ms).
func t0Timeout(fi, di, n, wi, clockKHz int) time.Duration {
	if fi == 0 || di == 0 || clockKHz == 0 {
		return nonISOTimeout
	}
	f, d, c := float64(fi), float64(di), float64(clockKHz)
	egt := 12*f/d/c + (f/d)*float64(n)/c
	wwt := 960 * float64(wi) * f / c
	t := defaultTimeout
	for _, v := range []float64{261*egt + 6*wwt, 5*egt + 260*wwt} {
		if ms(v) > t {
			t = ms(v)
		}
	}
	return t
}

// t1Timeout is the longest a T=1 block exchange may take (libccid
// T1_card_timeout; ISO 7816-3 §11.4): the host's block (260 EGT), the
// block waiting time, the card's block (260 CWT), plus t1Slack.
func t1Timeout(fi, di, n, bwi, cwi, clockKHz int) time.Duration {
	if fi == 0 || di == 0 || clockKHz == 0 {
		return nonISOTimeout
	}
	f, d, c := float64(fi), float64(di), float64(clockKHz)
	etu := f / d / c
	egt := 12*etu + (f/d)*float64(n)/c
	bwt := 11*etu + float64(int(1)<<(bwi&15))*960*372/c
	cwt := float64(11+int(1)<<(cwi&15)) * etu
	t := ms(260*egt+bwt+260*cwt) + t1Slack
	if t < defaultTimeout {
		t = defaultTimeout
	}
	return t
}

// cardTimeout computes the command timeout for a card with ATR a (nil
// when it does not parse), running protocol proto at transmission
// parameters ta1, on a reader whose card clock is clockKHz.
func cardTimeout(a *atr.ATR, proto int, ta1 byte, clockKHz uint32) time.Duration {
	if a == nil || !a.ISOSpeed() {
		return nonISOTimeout
	}
	fi, di := atr.FiTable[ta1>>4], atr.DiTable[ta1&0x0F]
	n := a.ExtraGuardTime()
	if proto == 1 {
		bwi, cwi := a.T1Waiting()
		return t1Timeout(fi, di, n, bwi, cwi, int(clockKHz))
	}
	return t0Timeout(fi, di, n, a.WI(), int(clockKHz))
}
