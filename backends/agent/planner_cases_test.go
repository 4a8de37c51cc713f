package agent

// plannerCases are requests in plain words, the workflow each must
// produce, and what that workflow must do on sample data.
var plannerCases = []plannerCase{
	{
		say: []string{`When a webhook receives a ticket with priority equal to "high", POST it to S/escalate`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.priority == "high"} | call_1:http_request{body={{ trigger.body }} method=POST url=S/escalate} | trigger>check | check>call_1:true`,
		runs: []planRun{
			{data: map[string]any{"priority": "high"}, requests: `POST /escalate {"priority":"high"}`},
			{data: map[string]any{"priority": "low"}, requests: ``},
		},
	},
	{
		say: []string{`When I run it manually, fetch S/ticket then post the result to S/archive`}, trigger: "manual",
		shape: `trigger:trigger{source=manual} | call_1:http_request{method=GET url=S/ticket} | call_2:http_request{body={{ nodes.call_1.body }} method=POST url=S/archive} | trigger>call_1 | call_1>call_2`,
		runs:  []planRun{{data: map[string]any{"x": 1}, requests: `GET /ticket; POST /archive {"id":7,"priority":"high"}`}},
	},
	{
		say: []string{`When an order over 100 comes in, POST it to S/big`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.amount > 100} | call_1:http_request{body={{ trigger.body }} method=POST url=S/big} | trigger>check | check>call_1:true`,
		runs: []planRun{
			{data: map[string]any{"amount": 150}, requests: `POST /big {"amount":150}`},
			{data: map[string]any{"amount": 50}, requests: ``},
		},
	},
	{
		say: []string{`When a payment below 20 comes in, reply with 202 'too small', otherwise forward it to S/ledger`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.amount < 20} | respond:respond{body=too small status_code=202} | otherwise_call_1:http_request{body={{ trigger.body }} method=POST url=S/ledger} | trigger>check | check>respond:true | check>otherwise_call_1:false`,
		runs: []planRun{
			{data: map[string]any{"amount": 5}, requests: ``, respond: `202 "too small"`},
			{data: map[string]any{"amount": 50}, requests: `POST /ledger {"amount":50}`},
		},
	},
	{
		say: []string{`Every 15 minutes GET S/status`}, trigger: "schedule",
		shape: `trigger:trigger{source=schedule} | call_1:http_request{method=GET url=S/status} | trigger>call_1`,
		runs:  []planRun{{data: map[string]any{}, requests: `GET /status`}},
	},
	{
		say: []string{`every day at 9am call S/report`}, trigger: "schedule",
		shape: `trigger:trigger{source=schedule} | call_1:http_request{method=GET url=S/report} | trigger>call_1`,
		runs:  []planRun{{data: map[string]any{}, requests: `GET /report`}},
	},
	{
		say: []string{`when a webhook receives a reading where temperature is at least 30, wait 1 second then POST it to S/hot`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.temperature >= 30} | wait_1:delay{duration=1s} | call_1:http_request{body={{ trigger.body }} method=POST url=S/hot} | trigger>check | check>wait_1:true | wait_1>call_1`,
		runs: []planRun{
			{data: map[string]any{"temperature": 30}, requests: `POST /hot {"temperature":30}`},
			{data: map[string]any{"temperature": 29.5}, requests: ``},
		},
	},
	{
		say: []string{`a webhook that receives orders`, `only the ones over 50`, `post them to S/big`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.amount > 50} | call_1:http_request{body={{ trigger.body }} method=POST url=S/big} | trigger>check | check>call_1:true`,
		runs: []planRun{
			{data: map[string]any{"amount": 60}, requests: `POST /big {"amount":60}`},
			{data: map[string]any{"amount": 50}, requests: ``},
		},
	},
	{
		say: []string{`when I run it manually, PUT S/sync`}, trigger: "manual",
		shape: `trigger:trigger{source=manual} | call_1:http_request{body={{ trigger }} method=PUT url=S/sync} | trigger>call_1`,
		runs:  []planRun{{data: map[string]any{"full": true}, requests: `PUT /sync {"full":true}`}},
	},
	{
		say: []string{`When a webhook receives a ticket, respond with 'thanks'`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | respond:respond{body=thanks status_code=200} | trigger>respond`,
		runs:  []planRun{{data: map[string]any{"id": 1}, requests: ``, respond: `200 "thanks"`}},
	},
	{
		say: []string{`When a webhook receives a ticket where status is not "closed", POST it to S/open`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.status != "closed"} | call_1:http_request{body={{ trigger.body }} method=POST url=S/open} | trigger>check | check>call_1:true`,
		runs: []planRun{
			{data: map[string]any{"status": "open"}, requests: `POST /open {"status":"open"}`},
			{data: map[string]any{"status": "closed"}, requests: ``},
		},
	},
	{
		say: []string{`When a webhook receives an event with type = "signup", POST it to S/signups, otherwise POST it to S/other`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.type == "signup"} | call_1:http_request{body={{ trigger.body }} method=POST url=S/signups} | otherwise_call_1:http_request{body={{ trigger.body }} method=POST url=S/other} | trigger>check | check>call_1:true | check>otherwise_call_1:false`,
		runs: []planRun{
			{data: map[string]any{"type": "signup"}, requests: `POST /signups {"type":"signup"}`},
			{data: map[string]any{"type": "login"}, requests: `POST /other {"type":"login"}`},
		},
	},
	{
		say: []string{`When a webhook receives a ticket with priority equal to "High", POST it to S/escalate and respond with 201 'escalated'`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.priority == "High"} | call_1:http_request{body={{ trigger.body }} method=POST url=S/escalate} | respond:respond{body=escalated status_code=201} | trigger>check | check>call_1:true | call_1>respond`,
		runs: []planRun{
			{data: map[string]any{"priority": "High"}, requests: `POST /escalate {"priority":"High"}`, respond: `201 "escalated"`},
			{data: map[string]any{"priority": "high"}, requests: ``},
		},
	},
	{
		say: []string{`Every hour fetch S/report and post it to S/dashboard`}, trigger: "schedule",
		shape: `trigger:trigger{source=schedule} | call_1:http_request{method=GET url=S/report} | call_2:http_request{body={{ nodes.call_1.body }} method=POST url=S/dashboard} | trigger>call_1 | call_1>call_2`,
		runs:  []planRun{{data: map[string]any{}, requests: `GET /report; POST /dashboard {"rows":3}`}},
	},
	{
		say: []string{`When a webhook receives an order with amount over 1000, POST it to S/review, otherwise respond with 200 'auto-approved'`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.amount > 1000} | call_1:http_request{body={{ trigger.body }} method=POST url=S/review} | otherwise_respond:respond{body=auto-approved status_code=200} | trigger>check | check>call_1:true | check>otherwise_respond:false`,
		runs: []planRun{
			{data: map[string]any{"amount": 2000}, requests: `POST /review {"amount":2000}`},
			{data: map[string]any{"amount": 10}, requests: ``, respond: `200 "auto-approved"`},
		},
	},
	{
		say: []string{`When a webhook receives a donation of at least 500, POST it to S/thanks`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.amount >= 500} | call_1:http_request{body={{ trigger.body }} method=POST url=S/thanks} | trigger>check | check>call_1:true`,
		runs: []planRun{
			{data: map[string]any{"amount": 500}, requests: `POST /thanks {"amount":500}`},
			{data: map[string]any{"amount": 499}, requests: ``},
		},
	},
	{
		say: []string{`When I run it manually, delete S/cache`}, trigger: "manual",
		shape: `trigger:trigger{source=manual} | call_1:http_request{method=DELETE url=S/cache} | trigger>call_1`,
		runs:  []planRun{{data: map[string]any{}, requests: `DELETE /cache`}},
	},
	{
		say: []string{`When a webhook receives a ticket, POST it to S/a, then POST it to S/b`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | call_1:http_request{body={{ trigger.body }} method=POST url=S/a} | call_2:http_request{body={{ trigger.body }} method=POST url=S/b} | trigger>call_1 | call_1>call_2`,
		runs:  []planRun{{data: map[string]any{"id": 3}, requests: `POST /a {"id":3}; POST /b {"id":3}`}},
	},
	{
		say: []string{`When a webhook receives a ticket, POST it to S/create and then post the response to S/log`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | call_1:http_request{body={{ trigger.body }} method=POST url=S/create} | call_2:http_request{body={{ nodes.call_1.body }} method=POST url=S/log} | trigger>call_1 | call_1>call_2`,
		runs:  []planRun{{data: map[string]any{"id": 3}, requests: `POST /create {"id":3}; POST /log {"got":{"id":3},"ok":true}`}},
	},
	{
		say: []string{`When a webhook receives a user where country equals "NL", respond with 200 'welcome', otherwise respond with 403 'denied'`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.country == "NL"} | respond:respond{body=welcome status_code=200} | otherwise_respond:respond{body=denied status_code=403} | trigger>check | check>respond:true | check>otherwise_respond:false`,
		runs: []planRun{
			{data: map[string]any{"country": "NL"}, requests: ``, respond: `200 "welcome"`},
			{data: map[string]any{"country": "US"}, requests: ``, respond: `403 "denied"`},
		},
	},
	{
		say: []string{`When a webhook receives a ticket with priority == "urgent", patch S/tickets`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.priority == "urgent"} | call_1:http_request{body={{ trigger.body }} method=PATCH url=S/tickets} | trigger>check | check>call_1:true`,
		runs: []planRun{
			{data: map[string]any{"priority": "urgent"}, requests: `PATCH /tickets {"priority":"urgent"}`},
			{data: map[string]any{"priority": "normal"}, requests: ``},
		},
	},
	{
		say: []string{`Every Monday at 8am, GET S/report then POST the result to S/weekly`}, trigger: "schedule",
		shape: `trigger:trigger{source=schedule} | call_1:http_request{method=GET url=S/report} | call_2:http_request{body={{ nodes.call_1.body }} method=POST url=S/weekly} | trigger>call_1 | call_1>call_2`,
		runs:  []planRun{{data: map[string]any{}, requests: `GET /report; POST /weekly {"rows":3}`}},
	},
	{
		say: []string{`When a webhook receives a ticket with priority equal to "high", POST it to S/escalate`, `only when priority is "urgent"`}, trigger: "webhook",
		shape: `trigger:trigger{source=webhook} | check:condition{expression=trigger.body.priority == "urgent"} | call_1:http_request{body={{ trigger.body }} method=POST url=S/escalate} | trigger>check | check>call_1:true`,
		runs: []planRun{
			{data: map[string]any{"priority": "urgent"}, requests: `POST /escalate {"priority":"urgent"}`},
			{data: map[string]any{"priority": "high"}, requests: ``},
		},
	},
}
