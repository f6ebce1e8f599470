package healthchecks

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Unescape interprets the Go escape sequences of s as in a Go string literal
// ("\r\n", "\x00", "\u00e9", "\\", "\"", octal "\000"), like gobetween's
// probe strings. Unlike strconv.Unquote it accepts bare double quotes and raw
// newlines, which stand for themselves. \xNN and octal escapes are single
// bytes, so binary protocols can be written.
func Unescape(s string) ([]byte, error) {
	out := make([]byte, 0, len(s))
	for len(s) > 0 {
		switch {
		case s[0] != '\\':
			// Raw bytes (bare quotes, newlines, invalid UTF-8) stand for themselves.
			out = append(out, s[0])
			s = s[1:]
			continue
		case len(s) >= 2 && s[0] == '\\' && s[1] == '\'':
			out = append(out, '\'')
			s = s[2:]
			continue
		}
		r, multibyte, tail, err := strconv.UnquoteChar(s, '"')
		if err != nil {
			return nil, fmt.Errorf("invalid escape at %q", prefix(s, 6))
		}
		if r < utf8.RuneSelf || !multibyte {
			out = append(out, byte(r))
		} else {
			out = utf8.AppendRune(out, r)
		}
		s = tail
	}
	return out, nil
}

func prefix(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
