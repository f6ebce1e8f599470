package discovery

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// plaintextSource loads a plaintext source for url with extra JSON fields.
func plaintextSource(t *testing.T, url, extra string) *Plaintext {
	t.Helper()
	return mustLoadKind(t, "plaintext", `{"plaintext_endpoint":`+quote(url)+extra+`}`).(*Plaintext)
}

func TestPlaintextFetch(t *testing.T) {
	ep := newEndpoint(t, "")
	// host, port and a weight written as "w=N"; priority as "pN"
	custom := `,"plaintext_regex_pattern":` + quote(`^(?P<host>[\w.-]*)\s+(?P<port>\d+)(?:\s+w=(?P<weight>\d+))?(?:\s+p(?P<priority>\d+))?(?:\s+(?P<sni>\S+\.example))?(?:\s+max=(?P<max_connections>\d+))?$`)
	runEndpointCases(t, ep, "/list.txt", "plaintext", "line", []endpointCase{
		{name: "backend lines", body: "127.0.0.1:6379 weight=2\n\n# replicas\n  [::1]:6380   priority=2 sni=db.example max_connections=4  \r\n10.0.0.1:1",
			want: "127.0.0.1:6379 weight=2 | [::1]:6380 priority=2 max_connections=4 sni=db.example | 10.0.0.1:1"},
		{name: "empty document", body: "", want: ""},
		{name: "only comments", body: "# nothing here\n\n", want: ""},
		{name: "garbage line", body: "127.0.0.1:1\n<html>Not Found</html>\n", wantErr: []string{"line 2", "<html>Not Found</html>"}},
		{name: "port 0 in a backend line", body: "127.0.0.1:0\n", wantErr: []string{"line 1", "port"}},
		{name: "regex", extra: custom, body: "10.0.0.1 80 w=3 p2 db.example max=9\n10.0.0.2 81\nweb-1.local 82 w=0\n",
			want: "10.0.0.1:80 weight=3 priority=2 max_connections=9 sni=db.example | 10.0.0.2:81 | web-1.local:82 weight=0"},
		{name: "regex without anchors picks the match out of the line", extra: `,"plaintext_regex_pattern":` + quote(`(?P<host>\d+\.\d+\.\d+\.\d+):(?P<port>\d+)`),
			body: "server a at 10.0.0.1:80 (primary)\nserver b at 10.0.0.2:81\n", want: "10.0.0.1:80 | 10.0.0.2:81"},
		{name: "regex with a bracketed IPv6 host", extra: `,"plaintext_regex_pattern":` + quote(`^(?P<host>\S+):(?P<port>\d+)$`),
			body: "[::1]:80\n", want: "[::1]:80"},
		{name: "regex line that does not match", extra: custom, body: "10.0.0.1 80\n10.0.0.2 eighty\n", wantErr: []string{"line 2", "10.0.0.2 eighty", "does not match plaintext_regex_pattern"}},
		{name: "regex with empty host or port 0 skips the line", extra: `,"plaintext_regex_pattern":` + quote(`^(?P<host>[^:]*):(?P<port>\d*)$`),
			body: ":80\n10.0.0.1:0\n10.0.0.1:81\n10.0.0.1:\n", want: "10.0.0.1:81", skipped: []int{1, 2, 4}},
		{name: "regex with a bad port", extra: custom, body: "10.0.0.1 99999\n", wantErr: []string{"line 1", "port"}},
		{name: "not found", status: 404, body: "no such list\n", wantErr: []string{"status 404", "no such list"}},
	})
	t.Run("unreachable endpoint", func(t *testing.T) {
		url := closedURL(t)
		_, err := plaintextSource(t, url, "").Fetch(context.Background())
		wantErrParts(t, err, "plaintext", url, "refused")
	})
}

func TestPlaintextTimeout(t *testing.T) {
	ep := newEndpoint(t, "")
	ep.setHang()
	src := plaintextSource(t, ep.URL, `,"timeout":"200ms"`)
	ctx, cancel := context.WithTimeout(context.Background(), src.Settings().FetchTimeout())
	defer cancel()
	start := time.Now()
	_, err := src.Fetch(ctx)
	wantErrParts(t, err, "plaintext", "deadline exceeded")
	if took := time.Since(start); took < 200*time.Millisecond || took > time.Second {
		t.Errorf("Fetch returned after %v, want about 200ms", took)
	}
}

// TestPlaintextKeepsLastGoodList: through the Runner, a garbage document
// keeps the last good list; the list follows the document's changes.
func TestPlaintextKeepsLastGoodList(t *testing.T) {
	ep := newEndpoint(t, "127.0.0.1:1\n127.0.0.1:2\n")
	src := plaintextSource(t, ep.URL, `,"interval":"50ms"`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := newRecord()
	r := rec.runner(src)
	done := rec.start(ctx, r)
	defer func() { cancel(); <-done }()
	waitList(t, rec.updates, nil, "127.0.0.1:1 | 127.0.0.1:2", 5*time.Second, "plaintext")
	ep.set(200, "127.0.0.1:2\n127.0.0.1:3 weight=2\n")
	waitList(t, rec.updates, nil, "127.0.0.1:2 | 127.0.0.1:3 weight=2", 5*time.Second, "plaintext")
	ep.set(200, "127.0.0.1:2\nerror: database locked\n")
	err := recv(t, rec.errs, 5*time.Second, "the error")
	wantErrParts(t, err, "line 2", "error: database locked")
	// the same answer keeps failing and nothing is sent meanwhile
	recv(t, rec.errs, 5*time.Second, "the next error")
	for len(rec.updates) > 0 {
		if l := <-rec.updates; asLines(l) != "127.0.0.1:2 | 127.0.0.1:3 weight=2" {
			t.Fatalf("update %q while the document is bad", asLines(l))
		}
	}
	ep.set(200, "")
	waitList(t, rec.updates, nil, "", 5*time.Second, "plaintext")
}

func TestPlaintextProvision(t *testing.T) {
	const url = `"plaintext_endpoint":"http://127.0.0.1/list",`
	for _, tt := range []struct{ js, mention string }{
		{`{}`, "plaintext_endpoint: required"},
		{`{"plaintext_endpoint":"file:///etc/backends"}`, "plaintext_endpoint"},
		{`{` + url + `"plaintext_regex_pattern":"(?P<host>\\S+)"}`, "needs the named groups host and port"},
		{`{` + url + `"plaintext_regex_pattern":"(?P<port>\\d+)"}`, "needs the named groups host and port"},
		{`{` + url + `"plaintext_regex_pattern":"(\\S+):(\\d+)"}`, "needs the named groups host and port"},
		{`{` + url + `"plaintext_regex_pattern":"(?P<host>\\S+):(?P<port>\\d+) (?P<prio>\\d+)"}`, `unknown group "prio"`},
		{`{` + url + `"plaintext_regex_pattern":"(?P<host>\\S+):(?P<port>\\d+"}`, "plaintext_regex_pattern"},
		{`{` + url + `"plaintext_regexp_pattern":"x"}`, "plaintext_regexp_pattern"},
	} {
		_, err := loadKind(t, "plaintext", tt.js)
		wantErrParts(t, err, tt.mention)
		if tt.mention == "needs the named groups host and port" && !strings.Contains(err.Error(), "plaintext_regex_pattern") {
			t.Errorf("error %q does not name the field", err)
		}
	}
	mustLoadKind(t, "plaintext", `{`+url+`"plaintext_regex_pattern":"^(?P<host>\\S+):(?P<port>\\d+)(\\s+weight=(?P<weight>\\d+))?(\\s+priority=(?P<priority>\\d+))?(\\s+sni=(?P<sni>\\S+))?$"}`)
}

func TestPlaintextCaddyfile(t *testing.T) {
	newPlaintext := func() caddyfile.Unmarshaler { return new(Plaintext) }
	goldenCaddyfile(t, "testdata/plaintext", newPlaintext)
	caddyfileErrors(t, newPlaintext, []struct{ name, input, mention string }{
		{"two URLs", "plaintext http://a/ http://b/", "argument"},
		{"regex without value", "plaintext http://a/ {\n regex_pattern\n}", "argument"},
		{"unknown", "plaintext http://a/ {\n regexp x\n}", "regexp"},
	})
}

// FuzzPlaintextLines: any document gives an error or backends with a host
// and a valid port, with the default parser and with a regular expression.
func FuzzPlaintextLines(f *testing.F) {
	for _, seed := range []string{
		"127.0.0.1:6379 weight=2\n\n# c\n[::1]:6380 priority=2 sni=db max_connections=4\r\n",
		":80\n10.0.0.1:0\nx:1 weight=\n", "a 1 w=2 p3 b.example max=4\n", "\x00:1\n", "[::1]:80\n",
	} {
		f.Add(seed)
	}
	p := &Plaintext{Endpoint: "http://127.0.0.1/", RegexPattern: `^(?P<host>[^\s:]*):?\s*(?P<port>\d*)(?:\s+w=(?P<weight>\S+))?(?:\s+p(?P<priority>\S+))?(?:\s+(?P<sni>\S+))?(?:\s+max=(?P<max_connections>\S+))?$`}
	if err := p.Provision(caddyContext()); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		for _, parse := range []func(string) (backend.Backend, error){backend.Parse, p.parseMatch} {
			list, err := parseLines(doc, parse, func(int, string) {})
			if err != nil {
				continue
			}
			for _, b := range list {
				if b.Host == "" || b.Port == "" || b.Port == "0" || strings.ContainsFunc(b.Host, unicode.IsSpace) {
					t.Fatalf("unusable backend %+v from %q", b, doc)
				}
			}
		}
	})
}
