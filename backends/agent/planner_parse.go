package agent

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// request is what the offline planner understood of a conversation: each
// part is optional until the conversation supplies it, and a later message
// replaces what an earlier one said about the same part.
type request struct {
	trigger   string // webhook, schedule or manual
	cron      string // schedule
	every     string // schedule, in words
	entity    string // what arrives, e.g. "order"
	cond      *condition
	actions   []action // unconditional, or the condition's true branch
	otherwise []action // the condition's false branch
	respond   *response
	// otherwiseRespond is the false branch's answer to a webhook caller.
	otherwiseRespond *response
	// vagueAction is set when a message asks to send or call something
	// without saying where.
	vagueAction string
}

type condition struct {
	field string
	op    string // >, >=, <, <=, ==, != (text only)
	value any    // float64 or string
}

type action struct {
	kind   string // http or delay
	method string
	url    string
	delay  string // a Go duration, e.g. "30s"
	// fromPrev sends what the call before it returned instead of the
	// incoming data ("fetch X then post the result to Y").
	fromPrev bool
}

type response struct {
	status int
	body   string // "" sends the data received
}

var (
	reURL       = regexp.MustCompile(`https?://[^\s"'<>()\[\]{}]+`)
	reOtherwise = regexp.MustCompile(`(?i)\b(?:otherwise|or else|else|if not)\b[,:]?`)
	reWebhook   = regexp.MustCompile(`\b(?:webhook|receives?|received|receiving|comes? in|arrives?|is posted|gets posted)\b`)
	reManual    = regexp.MustCompile(`\b(?:manual(?:ly)?|on demand|by hand|when i (?:run|start|trigger) it)\b`)
	reEveryN    = regexp.MustCompile(`\bevery\s+(\d+)\s*(minute|min|hour|hr|day)s?\b`)
	reEvery     = regexp.MustCompile(`\b(?:every\s+(minute|hour|day|week|monday|tuesday|wednesday|thursday|friday|saturday|sunday)|(hourly|daily|weekly))\b(?:\s+at\s+(\d{1,2})(?::(\d{2}))?\s*(am|pm)?)?`)
	reEntity    = regexp.MustCompile(`\b(?:receives?|received|receiving|for|with|new|incoming)\s+(?:an?\s+|the\s+|new\s+)?([a-z][a-z_]{2,30})\b`)
	reCond      = regexp.MustCompile(`(?:\b([a-z][a-z0-9_]*)\s+)?(?:is\s+|are\s+|was\s+)?(over|above|more than|greater than|exceeds|exceeding|higher than|at least|under|below|less than|lower than|at most|equal to|equals|>=|<=|==|>|<|=)\s*\$?(-?\d+(?:\.\d+)?)`)
	reCondText  = regexp.MustCompile(`\b([a-z][a-z0-9_]*)\s+(is not equal to|not equal to|is not|isn't|!=|is equal to|equal to|equals|is|==|=)\s+["'“]([^"'“”]+)["'”]`)
	rePrevOut   = regexp.MustCompile(`\b(?:result|results|response|output|what it returns|what it returned)\b`)
	reMethod    = regexp.MustCompile(`\b(post|put|patch|get|delete|send|forward|notify|call|fetch|push|relay)\b`)
	reVague     = regexp.MustCompile(`\b(post|send|forward|notify|call|push|email|slack|message)\b`)
	reDelay     = regexp.MustCompile(`\b(?:wait|delay|pause|sleep)(?:\s+for)?\s+(\d+)\s*(seconds?|secs?|s|minutes?|mins?|m)\b`)
	reRespond   = regexp.MustCompile(`\b(?:respond|reply|answer|return)\w*(?:\s+(?:with|to the caller with|to the sender with))?(?:\s+(?:status\s+|http\s+)?(\d{3}))?(?:\s+and)?(?:\s+["']([^"']*)["'])?`)
)

// Words that can stand before a comparison without naming a field.
var notAField = map[string]bool{
	"it": true, "is": true, "are": true, "was": true, "the": true, "a": true, "an": true, "of": true, "if": true,
	"when": true, "where": true, "whose": true, "with": true, "that": true, "and": true, "than": true, "value": false,
	"only": true, "make": true, "them": true, "those": true, "ones": true, "data": true, "payload": true,
	"request": true, "requests": true, "body": true, "message": true, "messages": true, "event": true,
	"events": true, "something": true, "anything": true, "one": true, "things": true, "webhook": true,
}

// Things that arrive whose size is their amount.
var amountEntities = map[string]bool{
	"order": true, "orders": true, "payment": true, "payments": true, "invoice": true, "invoices": true,
	"purchase": true, "purchases": true, "sale": true, "sales": true, "transaction": true, "transactions": true,
	"refund": true, "refunds": true, "donation": true, "donations": true, "charge": true, "charges": true,
}

// parseMessage reads one user message.
func parseMessage(text string) request {
	var r request
	main, other, _ := splitOtherwise(text)
	lower := strings.ToLower(main)
	r.parseTrigger(lower)
	r.cond = parseCondition(main, r.entity)
	r.actions = parseActions(main)
	r.respond = parseRespond(main)
	if other != "" {
		r.otherwise = parseActions(other)
		r.otherwiseRespond = parseRespond(other)
	}
	if !hasHTTP(r.actions) && !hasHTTP(r.otherwise) {
		if m := reVague.FindString(lower); m != "" && r.respond == nil {
			r.vagueAction = m
		}
	}
	return r
}

func splitOtherwise(text string) (string, string, bool) {
	loc := reOtherwise.FindStringIndex(text)
	if loc == nil {
		return text, "", false
	}
	return text[:loc[0]], text[loc[1]:], true
}

func (r *request) parseTrigger(lower string) {
	switch {
	case reEveryN.MatchString(lower) || reEvery.MatchString(lower):
		r.trigger = "schedule"
		r.cron, r.every = parseSchedule(lower)
	case reWebhook.MatchString(lower):
		r.trigger = "webhook"
	case reManual.MatchString(lower):
		r.trigger = "manual"
	}
	if m := reEntity.FindStringSubmatch(lower); m != nil && !notAField[m[1]] {
		r.entity = strings.TrimSuffix(m[1], "s")
	}
}

func parseSchedule(lower string) (cron, words string) {
	if m := reEveryN.FindStringSubmatch(lower); m != nil {
		n, _ := strconv.Atoi(m[1])
		switch {
		case strings.HasPrefix(m[2], "min") && n > 0 && n < 60:
			return fmt.Sprintf("*/%d * * * *", n), fmt.Sprintf("every %d minutes", n)
		case strings.HasPrefix(m[2], "h") && n > 0 && n < 24:
			return fmt.Sprintf("0 */%d * * *", n), fmt.Sprintf("every %d hours", n)
		case m[2] == "day" && n == 1:
			return "0 0 * * *", "every day"
		}
		return "", ""
	}
	m := reEvery.FindStringSubmatch(lower)
	unit := m[1] + m[2]
	hour, minute := 0, 0
	if m[3] != "" {
		hour, _ = strconv.Atoi(m[3])
		minute, _ = strconv.Atoi(m[4])
		if m[5] == "pm" && hour < 12 {
			hour += 12
		}
		if m[5] == "am" && hour == 12 {
			hour = 0
		}
		if hour > 23 || minute > 59 {
			return "", ""
		}
	}
	at := fmt.Sprintf(" at %02d:%02d", hour, minute)
	switch unit {
	case "minute":
		return "* * * * *", "every minute"
	case "hour", "hourly":
		return fmt.Sprintf("%d * * * *", minute), "every hour"
	case "day", "daily":
		return fmt.Sprintf("%d %d * * *", minute, hour), "every day" + at
	case "week", "weekly":
		return fmt.Sprintf("%d %d * * 1", minute, hour), "every Monday" + at
	}
	days := map[string]int{"sunday": 0, "monday": 1, "tuesday": 2, "wednesday": 3, "thursday": 4, "friday": 5, "saturday": 6}
	return fmt.Sprintf("%d %d * * %d", minute, hour, days[unit]), "every " + strings.ToUpper(unit[:1]) + unit[1:] + at
}

var comparisons = map[string]string{
	"over": ">", "above": ">", "more than": ">", "greater than": ">", "exceeds": ">", "exceeding": ">", "higher than": ">",
	"at least": ">=", "under": "<", "below": "<", "less than": "<", "lower than": "<", "at most": "<=",
	"equal to": "==", "equals": "==", ">=": ">=", "<=": "<=", "==": "==", ">": ">", "<": "<", "=": "==",
}

var textComparisons = map[string]string{
	"is not equal to": "!=", "not equal to": "!=", "is not": "!=", "isn't": "!=", "!=": "!=",
	"is equal to": "==", "equal to": "==", "equals": "==", "is": "==", "==": "==", "=": "==",
}

func parseCondition(text, entity string) *condition {
	lower := strings.ToLower(text)
	for _, m := range reCond.FindAllStringSubmatch(lower, -1) {
		if strings.Contains(m[0], "://") {
			continue
		}
		value, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		return &condition{field: conditionField(m[1], entity), op: comparisons[m[2]], value: value}
	}
	if m := reCondText.FindStringSubmatchIndex(lower); m != nil && !notAField[lower[m[2]:m[3]]] {
		value := lower[m[6]:m[7]]
		if len(lower) == len(text) { // compare with the user's casing: "NL", not "nl"
			value = text[m[6]:m[7]]
		}
		return &condition{field: lower[m[2]:m[3]], op: textComparisons[lower[m[4]:m[5]]], value: value}
	}
	return nil
}

// conditionField is the field a comparison reads: the word before it when
// that names a field, "amount" when it names something that has one (an
// order over 100), "" when the message does not say (a later message or
// the current workflow may).
func conditionField(word, entity string) string {
	switch {
	case word == "" || notAField[word]:
		if amountEntities[entity] || amountEntities[entity+"s"] {
			return "amount"
		}
		return ""
	case amountEntities[word]:
		return "amount"
	}
	return word
}

func parseActions(text string) []action {
	var out []action
	lower := strings.ToLower(text)
	prevEnd := -1
	for _, loc := range reURL.FindAllStringIndex(text, -1) {
		url := strings.TrimRight(text[loc[0]:loc[1]], ".,;:!?")
		start := max(0, loc[0]-48)
		method := "POST"
		if ms := reMethod.FindAllString(lower[start:loc[0]], -1); len(ms) > 0 {
			switch ms[len(ms)-1] {
			case "put":
				method = "PUT"
			case "patch":
				method = "PATCH"
			case "get", "fetch", "call":
				method = "GET"
			case "delete":
				method = "DELETE"
			}
		}
		a := action{kind: "http", method: method, url: url}
		if prevEnd >= 0 && (method == "POST" || method == "PUT" || method == "PATCH") {
			prev := out[len(out)-1]
			a.fromPrev = prev.method == "GET" || rePrevOut.MatchString(lower[prevEnd:loc[0]])
		}
		out = append(out, a)
		prevEnd = loc[1]
	}
	for _, m := range reDelay.FindAllStringSubmatchIndex(lower, -1) {
		n := lower[m[2]:m[3]]
		unit := "s"
		if strings.HasPrefix(lower[m[4]:m[5]], "m") {
			unit = "m"
		}
		a := action{kind: "delay", delay: n + unit}
		// A wait mentioned before any call goes first.
		if len(out) > 0 && strings.Contains(lower[:m[0]], "://") {
			out = append(out, a)
		} else {
			out = append([]action{a}, out...)
		}
	}
	return out
}

func parseRespond(text string) *response {
	m := reRespond.FindStringSubmatch(strings.ToLower(text))
	if m == nil {
		return nil
	}
	r := &response{status: 200}
	if m[1] != "" {
		r.status, _ = strconv.Atoi(m[1])
	}
	if m[2] != "" {
		// Keep the user's casing of the text.
		if i := strings.Index(strings.ToLower(text), m[2]); i >= 0 {
			r.body = text[i : i+len(m[2])]
		}
	}
	return r
}

func hasHTTP(actions []action) bool {
	for _, a := range actions {
		if a.kind == "http" {
			return true
		}
	}
	return false
}

// merge lays a later message over what was understood so far.
func (r *request) merge(next request) {
	if next.trigger != "" {
		r.trigger, r.cron, r.every = next.trigger, next.cron, next.every
	}
	if next.entity != "" {
		r.entity = next.entity
	}
	if next.cond != nil {
		if next.cond.field == "" && r.cond != nil {
			next.cond.field = r.cond.field
		}
		r.cond = next.cond
	}
	if hasHTTP(next.actions) {
		r.actions = next.actions
	} else {
		r.actions = append(r.actions, next.actions...)
	}
	if len(next.otherwise) > 0 || next.otherwiseRespond != nil {
		r.otherwise, r.otherwiseRespond = next.otherwise, next.otherwiseRespond
	}
	if next.respond != nil {
		r.respond = next.respond
	}
	if r.cond != nil && r.cond.field == "" && amountEntities[r.entity] {
		r.cond.field = "amount"
	}
	if hasHTTP(r.actions) || r.respond != nil {
		r.vagueAction = ""
	}
	if next.vagueAction != "" {
		r.vagueAction = next.vagueAction
	}
}
