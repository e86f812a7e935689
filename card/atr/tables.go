package atr

// FiTable maps the Fi index (high nibble of TA1) to the clock rate
// conversion integer Fi; 0 marks RFU values (ISO/IEC 7816-3 table 7).
var FiTable = [16]int{372, 372, 558, 744, 1116, 1488, 1860, 0, 0, 512, 768, 1024, 1536, 2048, 0, 0}

// FmaxTable maps the Fi index to the maximum clock frequency fmax in
// kHz; 0 marks RFU values.
var FmaxTable = [16]int{4000, 5000, 6000, 8000, 12000, 16000, 20000, 0, 0, 5000, 7500, 10000, 15000, 20000, 0, 0}

// DiTable maps the Di index (low nibble of TA1) to the baud rate
// adjustment integer Di; 0 marks RFU values (ISO/IEC 7816-3 table 8).
var DiTable = [16]int{0, 1, 2, 4, 8, 16, 32, 64, 12, 20, 0, 0, 0, 0, 0, 0}

// DefaultTA1 is the TA1 value of the default transmission parameters
// (Fd = 372, Dd = 1).
const DefaultTA1 = 0x11

// BaudRate returns the bit rate in bit/s that the card runs at with the
// transmission parameters of ta1 (Fi index in the high nibble, Di index
// in the low nibble) and a card clock of clockKHz: f·Di/Fi. It returns 0
// for RFU values.
func BaudRate(ta1 byte, clockKHz int) int {
	f, d := FiTable[ta1>>4], DiTable[ta1&0x0F]
	if f == 0 || d == 0 {
		return 0
	}
	return int(int64(clockKHz) * 1000 * int64(d) / int64(f))
}
