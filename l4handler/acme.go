package l4handler

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
)

// checkACMEHosts validates acme_hosts: each entry is a DNS name (letters,
// digits, hyphens and dots, no port, no scheme), listed once. IP addresses
// and wildcards are refused: a wildcard needs the DNS challenge, which is
// configured on the tls app (put it in apps.tls.certificates.automate with
// an automation policy whose ACME issuer has challenges.dns).
func checkACMEHosts(names []string) error {
	seen := make(map[string]int, len(names))
	for i, name := range names {
		if err := checkACMEHost(name); err != nil {
			return fmt.Errorf("acme_hosts[%d] %q: %w", i, name, err)
		}
		key := strings.ToLower(name)
		if j, dup := seen[key]; dup {
			return fmt.Errorf("acme_hosts[%d] %q: duplicate of acme_hosts[%d]", i, name, j)
		}
		seen[key] = i
	}
	return nil
}

// checkACMEHost validates one acme_hosts entry.
func checkACMEHost(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty name")
	case strings.Contains(name, "*"):
		return fmt.Errorf("wildcard names need the DNS challenge: list them in apps.tls.certificates.automate with an ACME issuer that has challenges.dns")
	case strings.Contains(name, "://") || strings.ContainsAny(name, "/:"):
		if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
			return fmt.Errorf("IP addresses are not accepted, only DNS names")
		}
		return fmt.Errorf("a bare DNS name is expected, without scheme, port or path")
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return fmt.Errorf("IP addresses are not accepted, only DNS names")
	}
	if len(name) > 253 {
		return fmt.Errorf("longer than 253 characters")
	}
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("label %q must have 1 to 63 characters", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with a hyphen", label)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("label %q has the character %q (only letters, digits and hyphens)", label, r)
			}
		}
	}
	return nil
}

// manageACMEHosts hands acme_hosts to the tls app, the way Caddy's http app
// hands it the names of its sites: from Start, once every app of the config
// is provisioned. Obtaining, storing and renewing the certificates is then
// certmagic's, with the tls app's automation policy for each name.
func (a *App) manageACMEHosts() error {
	if len(a.ACMEHosts) == 0 || a.tlsApp == nil {
		return nil
	}
	subjects := make(map[string]struct{}, len(a.ACMEHosts))
	for _, name := range a.ACMEHosts {
		subjects[strings.ToLower(name)] = struct{}{}
	}
	if err := a.tlsApp.Manage(subjects); err != nil {
		return fmt.Errorf("acme_hosts: %w", err)
	}
	a.logger.Info("acme_hosts handed to the tls app", zap.Strings("acme_hosts", a.ACMEHosts))
	return nil
}

// loadTLSApp loads the tls app when acme_hosts is set.
func (a *App) loadTLSApp() error {
	if len(a.ACMEHosts) == 0 {
		return nil
	}
	if err := checkACMEHosts(a.ACMEHosts); err != nil {
		return err
	}
	app, err := a.ctx.App("tls")
	if err != nil {
		return fmt.Errorf("acme_hosts: loading the tls app: %w", err)
	}
	a.tlsApp = app.(*caddytls.TLS)
	return nil
}
