package balancers

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddy-between/between/backend"
)

// Values of SNIFilter.Strategy and SNIFilter.Unexpected.
const (
	SNIExact  = "exact"  // backend sni equals the client's server name, ignoring case
	SNIRegexp = "regexp" // backend sni is a regular expression the server name must match

	UnexpectedDefault = "default" // unmatched clients go to backends without sni
	UnexpectedReject  = "reject"  // unmatched clients are refused (ErrNoMatch)
	UnexpectedAny     = "any"     // unmatched clients may use any backend
)

// Decisions of SNIFilter.Prepare, kept in Client.sniMode.
const (
	sniUnprepared uint8 = iota // Prepare not called: only matching backends
	sniMatched                 // some backend matches: only matching backends
	sniPlain                   // unexpected, "default": backends without sni
	sniAny                     // unexpected, "any": every backend
	sniNone                    // unexpected, "reject": no backend
)

// maxPatterns bounds the compiled-regexp cache; discovery may churn sni values.
const maxPatterns = 1024

// SNIFilter restricts a client to the backends whose sni attribute fits the
// TLS server name the client sent (the server's `sni` settings).
//
// A client is "expected" when at least one backend of the pool matches its
// server name; it then may use only matching backends (if all of those are
// full it is refused with ErrAllFull rather than sent elsewhere). Otherwise —
// no backend matches, or the client sent no server name — Unexpected decides.
//
// Use: build it once per server with NewSNIFilter. For each connection, fill
// Client.SNI, then call Prepare(c, pool) with the pool passed to Elect, then
// Elect (again with the same Client on retries). Prepare sets c.Match when it
// is nil; a server may instead set c.Match to the method value f.Match once
// and reuse it. Neither Prepare nor Match allocates once a regexp is compiled.
// An SNIFilter is safe for concurrent use.
type SNIFilter struct {
	// Strategy is how a backend's sni is compared with the client's server
	// name: "exact" (default; equal ignoring case) or "regexp" (the backend's
	// sni is a Go regular expression, case-insensitive and, as in gobetween,
	// unanchored: write ^...$ to match the whole name). A backend whose sni is
	// not a valid regular expression matches no client.
	Strategy string
	// Unexpected is what happens to a client whose server name matches no
	// backend, or who sent none: "default" (only backends without sni),
	// "reject" (refused) or "any" (any backend).
	Unexpected string

	mu       sync.Mutex                                // serializes cache misses
	patterns atomic.Pointer[map[string]*regexp.Regexp] // copy-on-write; nil value = invalid
}

// NewSNIFilter checks the two strategies ("" selects the default) and returns
// the filter. Errors name the server's JSON field.
func NewSNIFilter(matching, unexpected string) (*SNIFilter, error) {
	f := &SNIFilter{Strategy: strings.ToLower(matching), Unexpected: strings.ToLower(unexpected)}
	switch f.Strategy {
	case "":
		f.Strategy = SNIExact
	case SNIExact, SNIRegexp:
	default:
		return nil, fmt.Errorf("hostname_matching_strategy: unknown value %q (want exact or regexp)", matching)
	}
	switch f.Unexpected {
	case "":
		f.Unexpected = UnexpectedDefault
	case UnexpectedDefault, UnexpectedReject, UnexpectedAny:
	default:
		return nil, fmt.Errorf("unexpected_hostname_strategy: unknown value %q (want default, reject or any)", unexpected)
	}
	return f, nil
}

// Prepare decides, once per connection, which backends of pool client c may
// use, and records the decision in c for Match. It sets c.Match to the
// filter when c.Match is nil. It costs one comparison per distinct backend sni
// until the first match.
func (f *SNIFilter) Prepare(c *Client, pool []*backend.Backend) {
	if c.Match == nil {
		c.Match = matchPrepared
	}
	c.sniFilter = f
	c.sniHit = ""
	if c.SNI != "" {
		var last string
		for _, b := range pool {
			if b.SNI == "" || b.SNI == last {
				continue
			}
			last = b.SNI
			if f.matches(c.SNI, b.SNI) {
				c.sniMode, c.sniHit = sniMatched, b.SNI
				return
			}
		}
	}
	switch f.Unexpected {
	case UnexpectedReject:
		c.sniMode = sniNone
	case UnexpectedAny:
		c.sniMode = sniAny
	default:
		c.sniMode = sniPlain
	}
}

// matchPrepared is the Client.Match that Prepare installs (a plain function,
// so installing it does not allocate).
func matchPrepared(c *Client, b *backend.Backend) bool {
	return c.sniFilter.Match(c, b)
}

// Match reports whether client c may use backend b, following the decision
// Prepare recorded in c. Without Prepare, only backends whose sni matches the
// client's server name pass (unexpected clients then get ErrNoMatch).
func (f *SNIFilter) Match(c *Client, b *backend.Backend) bool {
	switch c.sniMode {
	case sniAny:
		return true
	case sniPlain:
		return b.SNI == ""
	case sniNone:
		return false
	}
	if b.SNI == "" || c.SNI == "" {
		return false
	}
	if b.SNI == c.sniHit {
		return true
	}
	return f.matches(c.SNI, b.SNI)
}

// matches compares a client's server name with a backend's sni (both non-empty).
func (f *SNIFilter) matches(name, sni string) bool {
	if f.Strategy != SNIRegexp {
		return strings.EqualFold(name, sni)
	}
	re := f.pattern(sni)
	return re != nil && re.MatchString(name)
}

// pattern returns the compiled form of sni, nil when it is invalid. Hits are
// a lock-free map read; misses compile once and publish a new map.
func (f *SNIFilter) pattern(sni string) *regexp.Regexp {
	if m := f.patterns.Load(); m != nil {
		if re, ok := (*m)[sni]; ok {
			return re
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.patterns.Load()
	if old != nil {
		if re, ok := (*old)[sni]; ok {
			return re
		}
	}
	re, err := regexp.Compile("(?i)" + sni)
	if err != nil {
		re = nil
	}
	m := make(map[string]*regexp.Regexp, 1)
	if old != nil && len(*old) < maxPatterns {
		for k, v := range *old {
			m[k] = v
		}
	}
	m[sni] = re
	f.patterns.Store(&m)
	return re
}
