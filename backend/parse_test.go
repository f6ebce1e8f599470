package backend

import (
	"strings"
	"testing"
)

func TestParseValid(t *testing.T) {
	tests := []struct {
		line string
		want Backend
	}{
		{"127.0.0.1:80", Backend{Host: "127.0.0.1", Port: "80", Weight: 1, Priority: 1}},
		{"  127.0.0.1:80  ", Backend{Host: "127.0.0.1", Port: "80", Weight: 1, Priority: 1}},
		{"127.0.0.1:80 weight=5 priority=2 max_connections=10 sni=a.example",
			Backend{Host: "127.0.0.1", Port: "80", Weight: 5, Priority: 2, MaxConnections: 10, SNI: "a.example"}},
		{"127.0.0.1:80 sni=a.example max_connections=10 priority=2 weight=5",
			Backend{Host: "127.0.0.1", Port: "80", Weight: 5, Priority: 2, MaxConnections: 10, SNI: "a.example"}},
		{"\t127.0.0.1:80\t\tweight=3 \t priority=7\t",
			Backend{Host: "127.0.0.1", Port: "80", Weight: 3, Priority: 7}},
		{"[::1]:80", Backend{Host: "::1", Port: "80", Weight: 1, Priority: 1}},
		{"[2001:db8::5]:65535 weight=0", Backend{Host: "2001:db8::5", Port: "65535", Weight: 0, Priority: 1}},
		{"backend-1.internal:6379 priority=0", Backend{Host: "backend-1.internal", Port: "6379", Weight: 1, Priority: 0}},
		{"localhost:1", Backend{Host: "localhost", Port: "1", Weight: 1, Priority: 1}},
		{"127.0.0.1:080", Backend{Host: "127.0.0.1", Port: "80", Weight: 1, Priority: 1}},
		{"127.0.0.1:80 WEIGHT=4", Backend{Host: "127.0.0.1", Port: "80", Weight: 4, Priority: 1}},
		{"127.0.0.1:80 max_connections=0", Backend{Host: "127.0.0.1", Port: "80", Weight: 1, Priority: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			got, err := Parse(tt.line)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.line, err)
			}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.line, got, tt.want)
			}
			if got.Stats != nil {
				t.Fatalf("Parse(%q): Stats = %p, want nil", tt.line, got.Stats)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name, line string
		mention    []string // every string must appear in the error text
	}{
		{"empty", "", []string{"empty"}},
		{"blank", " \t ", []string{"empty"}},
		{"no port", "127.0.0.1", []string{"127.0.0.1"}},
		{"empty port", "127.0.0.1:", []string{"127.0.0.1:"}},
		{"port 0", "127.0.0.1:0", []string{"127.0.0.1:0", "port"}},
		{"port 65536", "127.0.0.1:65536", []string{"65536", "port"}},
		{"port abc", "127.0.0.1:abc", []string{"abc", "port"}},
		{"negative port", "127.0.0.1:-1", []string{"-1", "port"}},
		{"empty host", ":80", []string{":80", "host"}},
		{"unbracketed IPv6", "::1:80", []string{"::1:80"}},
		{"unbracketed IPv6 long", "2001:db8::1:80", []string{"2001:db8::1:80"}},
		{"unknown attribute", "127.0.0.1:80 colour=red", []string{"colour", "unknown"}},
		{"duplicate attribute", "127.0.0.1:80 weight=1 weight=2", []string{"weight", "twice"}},
		{"duplicate attribute case", "127.0.0.1:80 sni=a SNI=b", []string{"sni", "twice"}},
		{"negative weight", "127.0.0.1:80 weight=-1", []string{"weight", "-1"}},
		{"weight not a number", "127.0.0.1:80 weight=x", []string{"weight", "x"}},
		{"priority not a number", "127.0.0.1:80 priority=1.5", []string{"priority", "1.5"}},
		{"max_connections too large", "127.0.0.1:80 max_connections=99999999999", []string{"max_connections", "99999999999"}},
		{"missing value", "127.0.0.1:80 weight=", []string{"weight="}},
		{"missing equals", "127.0.0.1:80 weight", []string{"weight", "key=value"}},
		{"missing key", "127.0.0.1:80 =5", []string{"unknown"}},
		{"slash in host", "10.0.0.0/8:80", []string{"10.0.0.0/8:80"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Parse(tt.line)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error", tt.line, b)
			}
			for _, m := range tt.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("Parse(%q) error %q does not mention %q", tt.line, err, m)
				}
			}
			if b != (Backend{}) {
				t.Errorf("Parse(%q) returned %+v with the error, want the zero Backend", tt.line, b)
			}
		})
	}
}

func TestStringRoundTrip(t *testing.T) {
	tests := []struct {
		b    Backend
		want string
	}{
		{Backend{Host: "127.0.0.1", Port: "80", Weight: 1, Priority: 1}, "127.0.0.1:80"},
		{Backend{Host: "::1", Port: "443", Weight: 1, Priority: 1}, "[::1]:443"},
		{Backend{Host: "db", Port: "5432", Weight: 0, Priority: 3, MaxConnections: 9, SNI: "db.internal"},
			"db:5432 weight=0 priority=3 max_connections=9 sni=db.internal"},
		{Backend{Host: "10.0.0.1", Port: "1", Weight: 7, Priority: 0}, "10.0.0.1:1 weight=7 priority=0"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.b.String(); got != tt.want {
				t.Fatalf("String() = %q, want %q", got, tt.want)
			}
			back, err := Parse(tt.b.String())
			if err != nil {
				t.Fatalf("Parse(String()): %v", err)
			}
			if back != tt.b {
				t.Fatalf("Parse(String()) = %+v, want %+v", back, tt.b)
			}
		})
	}
}

func TestAddress(t *testing.T) {
	for _, tt := range []struct{ line, want string }{
		{"127.0.0.1:80 weight=2", "127.0.0.1:80"},
		{"[::1]:80", "[::1]:80"},
		{"example-host:9", "example-host:9"},
	} {
		b, err := Parse(tt.line)
		if err != nil {
			t.Fatal(err)
		}
		if got := b.Address(); got != tt.want {
			t.Errorf("Parse(%q).Address() = %q, want %q", tt.line, got, tt.want)
		}
	}
}

func TestSameAttributes(t *testing.T) {
	a := Backend{Host: "h", Port: "1", Weight: 1, Priority: 1, Stats: new(Stats)}
	for _, tt := range []struct {
		name string
		mod  func(*Backend)
		same bool
	}{
		{"identical", func(*Backend) {}, true},
		{"other stats", func(b *Backend) { b.Stats = new(Stats) }, true},
		{"host", func(b *Backend) { b.Host = "g" }, false},
		{"port", func(b *Backend) { b.Port = "2" }, false},
		{"weight", func(b *Backend) { b.Weight = 2 }, false},
		{"priority", func(b *Backend) { b.Priority = 2 }, false},
		{"max_connections", func(b *Backend) { b.MaxConnections = 2 }, false},
		{"sni", func(b *Backend) { b.SNI = "x" }, false},
	} {
		b := a
		tt.mod(&b)
		if got := a.SameAttributes(&b); got != tt.same {
			t.Errorf("%s: SameAttributes = %v, want %v", tt.name, got, tt.same)
		}
	}
}

// FuzzParse checks that Parse never panics and that every accepted line
// survives a String round trip unchanged.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"127.0.0.1:80",
		"[::1]:80 weight=2",
		"host:1 sni=a max_connections=3 priority=0 weight=0",
		"h:65536",
		"::1:80",
		"h:80 weight=1 weight=1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		b, err := Parse(line)
		if err != nil {
			return
		}
		if b.Host == "" || b.Port == "" {
			t.Fatalf("Parse(%q) = %+v without error but with an empty host or port", line, b)
		}
		s := b.String()
		back, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q) ok, but Parse(String() = %q): %v", line, s, err)
		}
		if back != b {
			t.Fatalf("round trip of %q via %q: got %+v, want %+v", line, s, back, b)
		}
		if back.String() != s {
			t.Fatalf("String not stable: %q then %q", s, back.String())
		}
	})
}
