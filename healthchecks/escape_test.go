package healthchecks

import (
	"bytes"
	"strconv"
	"testing"
	"unicode/utf8"
)

func TestUnescape(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{``, "", false},
		{`PING\r\n`, "PING\r\n", false},
		{`\x00\x01\xff`, "\x00\x01\xff", false},
		{`\000\177\377`, "\x00\x7f\xff", false},
		{`\u00e9\U0001F600`, "é😀", false},
		{`\a\b\f\n\r\t\v\\`, "\a\b\f\n\r\t\v\\", false},
		{`say "hi"`, `say "hi"`, false}, // bare quotes stand for themselves
		{`\"quoted\"`, `"quoted"`, false},
		{`it\'s`, `it's`, false},
		{"raw\nnewline", "raw\nnewline", false},
		{"\xff\xfe raw bytes", "\xff\xfe raw bytes", false},
		{`\q`, "", true},
		{`\x4`, "", true},
		{`\400`, "", true},
		{`trailing\`, "", true},
		{`\uD800`, "", true},
	}
	for _, tt := range tests {
		got, err := Unescape(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("Unescape(%q) error %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && string(got) != tt.want {
			t.Errorf("Unescape(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzUnescape checks Unescape against strconv.Unquote wherever the latter
// accepts the (valid UTF-8) string as the body of a Go string literal.
func FuzzUnescape(f *testing.F) {
	for _, s := range []string{`PING\r\n`, `\x00\xff`, `\u00e9`, `\777`, `a"b`, `\'`, `\`, "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Unescape(s)
		want, werr := strconv.Unquote(`"` + s + `"`)
		// Raw invalid UTF-8 is kept byte for byte, where Unquote substitutes U+FFFD.
		if werr == nil && utf8.ValidString(s) {
			if err != nil {
				t.Fatalf("Unescape(%q): %v; strconv.Unquote accepts it", s, err)
			}
			if !bytes.Equal(got, []byte(want)) {
				t.Fatalf("Unescape(%q) = %q, strconv.Unquote = %q", s, got, want)
			}
		}
	})
}
