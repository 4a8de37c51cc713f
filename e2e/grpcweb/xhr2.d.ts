// xhr2 ships no types: it is an XMLHttpRequest for Node.
declare module "xhr2";
