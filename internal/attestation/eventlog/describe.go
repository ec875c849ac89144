package eventlog

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"unicode"
)

// maxDescriptionText bounds the text Description quotes, so that an error message stays one line even
// for an event carrying a whole kernel command line.
const maxDescriptionText = 60

// Description returns a short human-readable identification of the event for error messages: its type, its
// PCR and, for the event types whose data firmware and boot loaders fill with a message or command line,
// that text; for everything else a prefix of its SHA-256 digest, which is what reference values list.
// Text is only shown when all of it is printable, so a crafted log cannot inject control characters.
func (e Event) Description() string {
	prefix := fmt.Sprintf("%s in PCR %d", e.Type, e.PCR)
	switch e.Type {
	case EvEFIAction, EvAction, EvIPL, EvSeparator, EvPostCode:
		if text, ok := printableText(e.Data, maxDescriptionText); ok {
			return prefix + ": " + strconv.Quote(text)
		}
	}
	if d, ok := e.Digests[AlgSHA256]; ok && len(d) > 0 {
		return prefix + ", sha256 " + hex.EncodeToString(d[:min(len(d), 8)]) + "…"
	}
	return fmt.Sprintf("%s, %d bytes of data, no SHA-256 digest", prefix, len(e.Data))
}

// printableText decodes data as printable ASCII or, failing that, as UTF-16LE (what UEFI applications such
// as systemd-boot log), and cuts it to at most n characters. Trailing NUL terminators are dropped. UTF-16 is
// only accepted within Latin-1: nearly any even-length binary decodes to "printable" CJK, which would be
// worse than showing a digest. All of data is checked, but only the shown prefix is copied, so describing a
// multi-megabyte event stays cheap.
func printableText(data []byte, n int) (string, bool) {
	if s, ok := asciiText(data, n); ok {
		return s, true
	}
	return utf16Text(data, n)
}

func asciiText(data []byte, n int) (string, bool) {
	for len(data) > 0 && data[len(data)-1] == 0 {
		data = data[:len(data)-1]
	}
	if len(data) == 0 {
		return "", false
	}
	for _, c := range data {
		if c < 0x20 || c > 0x7E {
			return "", false
		}
	}
	if len(data) > n {
		return string(data[:n-1]) + "…", true
	}
	return string(data), true
}

func utf16Text(data []byte, n int) (string, bool) {
	if len(data)%2 != 0 {
		return "", false
	}
	for len(data) >= 2 && data[len(data)-2] == 0 && data[len(data)-1] == 0 {
		data = data[:len(data)-2]
	}
	if len(data) == 0 {
		return "", false
	}
	units := len(data) / 2
	shown := min(units, n)
	if units > n {
		shown = n - 1
	}
	runes := make([]rune, 0, shown+1)
	for i := range units {
		r := rune(binary.LittleEndian.Uint16(data[2*i:]))
		if r > 0xFF || !unicode.IsPrint(r) {
			return "", false
		}
		if i < shown {
			runes = append(runes, r)
		}
	}
	if units > n {
		runes = append(runes, '…')
	}
	return string(runes), true
}
